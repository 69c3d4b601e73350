"""Echoing client input in error messages without echoing *all* of it.

An error names what was wrong (``unknown operation 'serch'``) but a hostile request must not make the server
repeat megabytes back (an 8 MB ``operation`` became a 21 MB answer and 17 MB of log per request) or spend seconds
comparing a 24 MB name with every known one. :func:`clip` is the one way an error message quotes client input.
"""

from __future__ import annotations

import re
from typing import Any

#: Characters of client input quoted in an error message; longer input is cut with a note of its length.
MAX_ECHO_CHARS = 80
#: Names longer than this get no "did you mean" suggestions (difflib is quadratic in the name's length).
MAX_SUGGEST_CHARS = 64


def clip(value: Any, limit: int = MAX_ECHO_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters (``'aaaa...' (8000000 characters)``); never the whole input."""
    if isinstance(value, (str, bytes)) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    if isinstance(value, (list, tuple, dict, set)) and len(value) > 8:
        return f"<{type(value).__name__} of {len(value)} items>"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


#: Longest error message sent to a client.
MAX_MESSAGE_CHARS = 2000
_PATH = re.compile(r"(?<![\w:/.~-])~?(?:/[^\s'\"(),;:\]\[]+)+")


def redact_paths(text: str) -> str:
    """``text`` with every absolute (or ``~/``) file-system path replaced by ``<server path>``."""
    return _PATH.sub("<server path>", text)


def client_message(text: str) -> str:
    """An error message fit for a client: no server paths, at most :data:`MAX_MESSAGE_CHARS` characters."""
    text = redact_paths(text)
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "..."
