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
        ("\u200b", "no visible character"),  # a zero-width space only
        ("\u3164\ufe0f", "no visible character"),  # a Hangul filler and a variation selector
        ("cola\u202e", "U+202E"),  # right-to-left override: reorders what is shown after it
        ("\u2066cola", "U+2066"),
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


def test_labels_are_stored_nfc_and_every_normal_form_names_one_label(tmp_path):
    import numpy as np

    from shitu.serving.gallery.local import Gallery

    nfc, nfd, wide = "caf\u00e9", "cafe\u0301", "\uff43\uff41\uff46\u00e9"
    rng = np.random.default_rng(1)
    with Gallery.create(tmp_path / "g", 8, index_method="Flat") as g:
        g.add(rng.standard_normal((4, 8)).astype(np.float32), [nfc, nfd, wide, "tea"])
        assert g.label_counts() == {nfc: 2, wide: 1, "tea": 1}  # NFC, not NFKC: full-width stays its own
        assert [r["label"] for r in g.list(label=nfd)] == [nfc, nfc]
        hits = g.search(rng.standard_normal((1, 8)).astype(np.float32), k=4, labels=[nfd])[0]
        assert len(hits) == 2 and {h.label for h in hits} == {nfc}
        assert g.remove(labels=[nfd]) == 2  # removing "café" in either form removes every item of the label
        assert g.label_counts() == {wide: 1, "tea": 1}
        item = g.list(label="tea")[0]["id"]
        g.update(item, label=nfd)
        assert g.get(item)["label"] == nfc
        with pytest.raises(ValueError, match="U\\+202E"):
            g.update(item, label="tea\u202e")


def test_zero_width_joiners_inside_a_visible_label_are_kept():
    # ZWJ / ZWNJ are format characters, but needed inside emoji sequences and Persian words.
    assert label_problem("\U0001f469\u200d\U0001f4bb", 128) is None
    assert label_problem("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", 128) is None
