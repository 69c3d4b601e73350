"""Names shared by every package (a leaf: imports nothing of shitu).

:data:`GALLERY_NAME` -- what a gallery name may be: letters, digits, ``_ . -``, starting with a letter or digit, at
most 64 characters. Requests pick galleries by such a name, never by a path; pack manifests declare galleries by it.
"""

from __future__ import annotations

import re

__all__ = ["GALLERY_NAME"]

#: ``\Z``, not ``$``: ``$`` also matches before a final newline.
GALLERY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
