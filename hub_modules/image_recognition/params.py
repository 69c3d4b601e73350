"""Defaults of the ``image_recognition`` module where they differ from the schema's (:mod:`shitu.params`): none.
Precedence when serving: schema defaults < these < scenario pack < ``config.json`` ``init_args`` < per request."""


def get_default_params() -> dict[str, dict[str, object]]:
    return {}
