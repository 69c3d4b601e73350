"""Parameters: the typed schema (:mod:`.schema`) and its merging (:mod:`.merge`).

Precedence, lowest first: schema defaults < scenario pack < ``config.json`` ``init_args`` < per-request overrides.
"""

from shitu.params.merge import ParamError, Params, coerce, flatten, merge, resolve
from shitu.params.schema import BY_NAME, FIELDS, SECTIONS, Field, section_defaults

__all__ = [
    "BY_NAME",
    "FIELDS",
    "SECTIONS",
    "Field",
    "ParamError",
    "Params",
    "coerce",
    "flatten",
    "merge",
    "resolve",
    "section_defaults",
]
