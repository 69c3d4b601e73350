"""Validate recorded PaddleX PP-ShiTuV2 exchanges against the ``paddlex`` package's own pydantic schema.

Run by ``tests/test_peer_apis.py`` with an interpreter that has ``paddlex[serving]`` installed (``paddlex`` pins
``numpy<2.4`` and so cannot live in the project's environment)::

    python validate_paddlex.py exchanges.json

``exchanges.json``: a list of ``{"operation", "request", "response", "status"}``. Prints one line per exchange and
exits 1 on the first that does not validate.
"""

import json
import sys

from paddlex.inference.serving.infra.models import AIStudioNoResultResponse, AIStudioResultResponse
from paddlex.inference.serving.schemas import pp_shituv2 as schema


def main(path: str) -> int:
    for ex in json.load(open(path)):
        endpoint, request_model, result_model = schema.PRIMARY_OPERATIONS[ex["operation"]]
        request_model.model_validate(ex["request"], strict=False)
        if ex["status"] == 200:
            AIStudioResultResponse[result_model].model_validate(ex["response"])
        else:
            AIStudioNoResultResponse.model_validate(ex["response"])
        print("valid", endpoint, ex["status"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
