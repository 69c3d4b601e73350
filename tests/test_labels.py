"""One label rule for requests, list files, the CLI and the gallery (real service in-process, real gallery)."""

from __future__ import annotations

import pytest

from shitu.serving.gallery.list_file import label_problem


@pytest.fixture(scope="module")
def search_service():
    from shitu.serving.hub.service import SearchService

    return SearchService({}, gallery="labels-test")


@pytest.mark.parametrize(
    "label, words",
    [
        ("cola\x85", "U+0085"),  # a C1 control character: used to pass the request check, then fail in the gallery
        ("cola\t", "U+0009"),
        ("   ", "empty"),
        ("x" * 129, "129 characters"),
    ],
)
def test_request_labels_follow_the_gallery_rule(search_service, label, words):
    from shitu.serving.hub.service import RequestError

    dim = search_service.engine({}).embedding_size
    with pytest.raises(RequestError, match="labels\\[0\\]") as info:
        search_service.handle({"operation": "add", "embeddings": [[0.1] * dim], "labels": [label]})
    assert words in str(info.value)
    assert label_problem(label, 128) is not None


def test_a_good_label_is_stored(search_service):
    dim = search_service.engine({}).embedding_size
    out = search_service.handle({"operation": "add", "embeddings": [[0.1] * dim], "labels": ["Coca Cola 330 ml"]})
    assert out["added"] == 1
