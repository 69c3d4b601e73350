"""The client SDK against the real `hub serving` (the session's `served` fixture), plus a tiny local HTTP server
for timeouts, retries and headers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import requests

from shitu.serving.client.sdk import (
    AsyncShituClient,
    Box,
    ConnectionFailed,
    Embeddings,
    GalleryInfo,
    ImageDetections,
    ImageFailed,
    ImageRecognitions,
    InputError,
    Match,
    Recognition,
    SearchHits,
    ServerError,
    ShituClient,
    ShituError,
    Timeout,
    draw,
)
from shitu.serving.engine.images import encode

GALLERY = "client-main"
# the best-scoring answer per query (general-lite 1.2.0: the collage's cup 0.86 outscores its cat 0.78)
QUERY_LABELS = {
    "cat_mirrored_crop": "cat",
    "coffee_rescaled_crop": "coffee",
    "rocket_bright_blur": "rocket",
    "collage_cat_and_coffee": "cat",  # both are in it; cat scores higher since issue #28 (boxes as detected)
    "not_in_gallery_ihc": None,
}


@pytest.fixture(scope="module")
def client(served):
    with ShituClient(served.url, timeout=120, retries=1, backoff=0, batch_size=2) as c:
        yield c


@pytest.fixture(scope="module")
def gallery(client, photos):
    """The demo photographs in the server gallery ``client-main``, added through the SDK in batches of 2."""
    ids = client.gallery_add(list(photos.values()), list(photos), gallery=GALLERY)
    assert len(ids) == len(photos) and len(set(ids)) == len(ids)
    return dict(zip(photos, ids))


def top_label(result) -> str | None:
    return result[0].label if result else None


# --------------------------------------------------------------------------------------------------------------
# every method, every input type, batching
# --------------------------------------------------------------------------------------------------------------
def test_recognize_accepts_path_bytes_numpy_and_pil(client, gallery, queries, tmp_path):
    from PIL import Image

    img = queries["cat_mirrored_crop"]
    path = tmp_path / "query.png"
    path.write_bytes(encode(img, ".png"))
    pil = Image.fromarray(np.ascontiguousarray(img[:, :, ::-1]))  # PIL is RGB
    for source in (str(path), path, path.read_bytes(), img, pil):
        res = client.recognize(source, gallery=GALLERY)  # one image in, one result out
        assert isinstance(res, ImageRecognitions) and res.ok and res.index == 0
        assert (res.width, res.height) == (400, 280)
        assert isinstance(res[0], Recognition) and res[0].label == "cat" and res[0].score > 0.8
        assert res[0].id == gallery["cat"]
    many = client.recognize([path, img, pil], gallery=GALLERY)  # a list in, a list out
    assert [top_label(r) for r in many] == ["cat"] * 3
    with pytest.raises(InputError, match="image 1: cannot read"):
        client.recognize([img, tmp_path / "missing.jpg"], gallery=GALLERY)
    with pytest.raises(InputError):
        client.recognize(12345)


def test_large_lists_go_in_batches_and_come_back_in_order(served, gallery, queries):
    sizes = []
    session = requests.Session()
    session.hooks["response"].append(lambda r, *a, **k: sizes.append(len(json.loads(r.request.body)["images"])))
    names = list(QUERY_LABELS)
    with ShituClient(served.url, batch_size=2, session=session) as c:
        res = c.recognize([queries[n] for n in names], gallery=GALLERY)
    assert sizes == [2, 2, 1]
    assert [r.index for r in res] == [0, 1, 2, 3, 4]
    assert [top_label(r) for r in res] == list(QUERY_LABELS.values())
    assert {r.label for r in res[3]} == {"cat", "coffee"}  # the collage: two objects, two boxes
    assert all(not r.is_whole_image for r in res[3])
    # a 4-D array is a list of frames
    frames = np.stack([queries["cat_mirrored_crop"]] * 3)
    assert [top_label(r) for r in ShituClient(served.url, batch_size=2).recognize(frames, gallery=GALLERY)] == [
        "cat"
    ] * 3


def test_many_vectors_go_in_requests_within_the_server_limits(client, gallery):
    """300 vectors: more than the server's Limits.max_queries (256) in one request, and 300 x return_k 20 more than
    its Limits.max_matches (2560). Before, the SDK sent 512 rows per request and the server refused them."""
    from .conftest import unit_vectors

    dim = client.gallery_info(gallery=GALLERY).dim
    vecs = unit_vectors(300, dim, seed=7)
    ids = client.gallery_add(embeddings=vecs, labels="bulk", gallery="client-bulk")
    assert len(ids) == 300 and len(set(ids)) == 300
    hits = client.search(vecs, gallery="client-bulk", return_k=20, score_thres=-1.0)
    assert len(hits) == 300 and all(len(h) == 20 for h in hits)
    assert [h[0].id for h in hits] == ids  # each vector finds itself first, in order across the requests


def test_detect(client, queries):
    res = client.detect(queries["collage_cat_and_coffee"])
    assert isinstance(res, ImageDetections) and all(isinstance(b, Box) for b in res)
    objects = [b for b in res if not b.is_whole_image]
    assert len(objects) == 2 and res[-1].is_whole_image and res[-1].bbox == [0, 0, 760, 420]
    assert "whole image" in str(res[-1]) and res.to_dict()["boxes"][0] == objects[0].to_dict()


def test_extract_and_search(client, gallery, photos, queries):
    embs = client.extract(
        [photos["coffee"], queries["cat_mirrored_crop"]], boxes=[[[100, 10, 450, 390], [0, 0, 200, 200]], None]
    )
    assert [type(e) for e in embs] == [Embeddings, Embeddings]
    assert embs[0].vectors.shape == (2, 512) and embs[0].boxes == [[100, 10, 450, 390], [0, 0, 200, 200]]
    assert embs[1].vectors.shape == (1, 512) and embs[1].boxes == [[0, 0, 400, 280]]
    np.testing.assert_allclose(np.linalg.norm(embs[1].vectors, axis=1), 1.0, atol=1e-4)
    hits = client.search(embs[1], gallery=GALLERY, return_k=3, score_thres=0.0)  # an Embeddings: a list out
    assert isinstance(hits[0], SearchHits) and len(hits[0]) == 3
    assert isinstance(hits[0][0], Match) and hits[0][0].label == "cat" and hits[0][0].id == gallery["cat"]
    one = client.search(embs[1].vectors[0], gallery=GALLERY, return_k=1)  # one vector: one result
    assert isinstance(one, SearchHits) and [m.label for m in one] == ["cat"]
    with pytest.raises(ServerError, match="512"):
        client.search([[0.1, 0.2]], gallery=GALLERY)


def test_gallery_add_list_info_remove(client, photos, queries):
    g = "client-crud"
    ids = client.gallery_add(
        [photos["rocket"], photos["flower"], photos["temple"]],
        ["rocket", "flower", "temple"],
        gallery=g,
        metadata=[{"sku": "R-1"}, None, None],
    )
    info = client.gallery_info(gallery=g)
    assert isinstance(info, GalleryInfo) and info.count == 3 and info.dim == 512 and "path" not in info.extra
    items = client.gallery_list(gallery=g)
    assert [(i.id, i.label) for i in items] == list(zip(ids, ["rocket", "flower", "temple"]))
    assert items[0].metadata == {"sku": "R-1"}
    assert [i.label for i in client.gallery_list("flower", gallery=g)] == ["flower"]
    # precomputed embeddings go through index_search
    vec = client.extract(photos["astronaut"]).vectors
    (new_id,) = client.gallery_add(labels="astronaut", embeddings=vec, gallery=g)
    assert client.gallery_info(gallery=g).count == 4
    assert client.gallery_remove(labels="rocket", gallery=g) == 1
    assert client.gallery_remove(labels="rocket", gallery=g) == 0  # idempotent
    assert client.gallery_remove(ids=[new_id, ids[1]], gallery=g) == 2
    assert [i.label for i in client.gallery_list(gallery=g)] == ["temple"]
    with pytest.raises(InputError):
        client.gallery_remove(gallery=g)
    with pytest.raises(InputError, match="2 items but 1 labels"):
        client.gallery_add([photos["cat"], photos["cat"]], ["cat"], gallery=g)


def test_scenarios(client):
    scenarios = client.scenarios()
    names = {s.name for s in scenarios}
    assert "general-lite" in names and sum(s.default for s in scenarios) == 1
    assert all("path" not in s.extra for s in scenarios)


def test_per_call_parameter_overrides(client, photos):
    img = photos["astronaut"]
    low = client.detect(img, threshold=0.1, max_det_results=20)
    high = client.detect(img, threshold=0.6, max_det_results=20)
    assert len(high) < len(low)
    assert client.detect(img, params={"Global": {"threshold": 0.6, "max_det_results": 20}}) == high
    assert client.detect(img, **{"Global.threshold": 0.6, "Global.max_det_results": 20}) == high
    with ShituClient(client.base_url, params={"Global": {"threshold": 0.6}}) as c:  # client-wide defaults
        assert c.detect(img, params={"Global": {"max_det_results": 20}}) == high


# --------------------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------------------
def test_server_errors_are_typed(client, photos):
    with pytest.raises(ServerError) as err:
        client.recognize(photos["cat"], thresold=0.3)
    e = err.value
    assert e.status == "101" and e.http_status == 200 and e.index is None and "thresold" in e.msg
    assert e.module == "image_recognition" and e.operation == "recognize" and isinstance(e, ShituError)
    with pytest.raises(ServerError, match="invalid gallery name"):
        client.gallery_info(gallery="../etc")
    with pytest.raises(ServerError, match="fixed when the service starts"):
        client.detect(photos["cat"], cpu_num_threads=4)


def test_bad_image_in_a_batch_gives_its_index(client, gallery, queries):
    good = queries["cat_mirrored_crop"]
    images = [good, b"not an image", b"still not", b"@@"]  # batch 2 fails entirely: asked image by image
    with pytest.raises(ImageFailed) as err:
        client.recognize(images, gallery=GALLERY)
    e = err.value
    assert isinstance(e, ServerError) and e.index == 1 and sorted(e.errors) == [1, 2, 3]
    assert "not an image" in e.errors[1] and str(e).startswith("image_recognition/recognize: image 1:")
    assert [r.ok for r in e.results] == [True, False, False, False] and top_label(e.results[0]) == "cat"
    res = client.recognize(images, gallery=GALLERY, raise_on_error=False)
    assert [r.index for r in res] == [0, 1, 2, 3] and [r.error is None for r in res] == [True, False, False, False]
    assert res[1].to_dict() == {"index": 1, "error": e.errors[1]} and "error" in str(res[1])
    single = client.detect(b"garbage", raise_on_error=False)
    assert isinstance(single, ImageDetections) and not single.ok and single == []
    with pytest.raises(ImageFailed) as err:
        client.extract([good, b"junk"])
    assert err.value.index == 1 and err.value.results[0].vectors.shape == (1, 512)


def test_gallery_add_failure_names_the_image_and_keeps_added_ids(client, photos):
    g = "client-add-fail"
    with pytest.raises(ServerError) as err:
        client.gallery_add(
            [photos["cat"], photos["coffee"], photos["rocket"], b"junk"], ["a", "b", "c", "d"], gallery=g
        )
    e = err.value
    assert e.index == 3 and "image 1:" in e.msg and "image 3 of the call" in str(e)
    assert len(e.partial) == 2  # the first request (batch of 2) was added; the second refused as a whole
    assert client.gallery_info(gallery=g).count == 2
    assert client.gallery_remove(ids=e.partial, gallery=g) == 2


# --------------------------------------------------------------------------------------------------------------
# retries: a tiny local server that answers slowly or with 503, and counts requests
# --------------------------------------------------------------------------------------------------------------
class FakeServer:
    def __init__(self):
        self.requests: list[dict] = []
        self.mode = "slow"
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake.requests.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), "body": json.loads(body)}
                )
                if fake.mode == "slow":
                    fake.release.wait(10)  # far longer than the client's timeout
                    return
                unavailable = fake.mode == "503" and len(fake.requests) < 3
                out = json.dumps({"status": "000", "msg": "", "results": []} if not unavailable else {}).encode()
                self.send_response(503 if unavailable else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def reset(self, mode: str) -> None:
        self.requests.clear()
        self.mode = mode

    def count_settles(self, expected: int) -> int:
        """Requests received, once the last attempt has surely arrived (synchronisation, not a timing check)."""
        deadline = threading.Event()
        for _ in range(100):
            if len(self.requests) >= expected:
                break
            deadline.wait(0.05)
        deadline.wait(0.2)
        return len(self.requests)

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake():
    f = FakeServer()
    yield f
    f.close()


def test_timeouts_are_retried_for_safe_calls_only_on_a_fake_server(fake):
    c = ShituClient(fake.url, timeout=0.3, retries=2, backoff=0, token="s3cret")
    with pytest.raises(Timeout) as err:
        c.recognize(b"\xff\xd8 any bytes")
    assert err.value.attempts == 3 and isinstance(err.value, TimeoutError)
    assert fake.count_settles(3) == 3
    assert {r["auth"] for r in fake.requests} == {"Bearer s3cret"}  # the token travels as a bearer header
    for call in (
        lambda: c.gallery_remove(labels=["x"]),
        lambda: c.gallery_info(),
        lambda: c.scenarios(),
        lambda: c.search([[0.5, 0.5]]),
    ):
        fake.reset("slow")
        with pytest.raises(Timeout):
            call()
        assert fake.count_settles(3) == 3
    fake.reset("slow")
    with pytest.raises(Timeout) as err:
        c.gallery_add([b"\xff\xd8 image"], ["x"])  # not idempotent: never repeated after sending
    assert err.value.attempts == 1 and fake.count_settles(1) == 1


def test_unavailable_answers_are_retried_on_a_fake_server(fake):
    fake.reset("503")
    assert ShituClient(fake.url, retries=2, backoff=0).scenarios() == []
    assert len(fake.requests) == 3
    fake.reset("503")
    with pytest.raises(ServerError) as err:
        ShituClient(fake.url, retries=2, backoff=0).gallery_add([b"x"], ["x"])
    assert err.value.http_status == 503 and len(fake.requests) == 1


def test_connection_refused_is_retried_then_raised():
    from shitu.serving.hub.control import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    c = ShituClient(url, retries=2, backoff=0.001)
    for call in (lambda: c.recognize(b"x"), lambda: c.gallery_info(), lambda: c.gallery_add([b"x"], ["x"])):
        with pytest.raises(ConnectionFailed) as err:
            call()
        # gallery_add too: a refused connection never reached the server, so repeating it is safe
        assert err.value.attempts == 3 and isinstance(err.value, ConnectionError)
        assert "Connection refused" in str(err.value)


def test_async_client_retries_as_the_blocking_one_on_a_fake_server(fake):
    """The same urllib3 Retry policies over httpx: safe calls repeated on 503 and timeouts, adds never after
    sending; the errors are the project's (shitu.errors) under the SDK's names."""
    import shitu.errors

    async def call(method, *args, **kwargs):
        async with AsyncShituClient(fake.url, timeout=0.3, retries=2, backoff=0) as c:
            return await getattr(c, method)(*args, **kwargs)

    fake.reset("503")
    assert asyncio.run(call("scenarios")) == [] and len(fake.requests) == 3
    fake.reset("503")
    with pytest.raises(ServerError) as err:
        asyncio.run(call("gallery_add", [b"x"], ["x"]))
    assert err.value.http_status == 503 and len(fake.requests) == 1
    fake.reset("slow")
    with pytest.raises(Timeout) as timeout:
        asyncio.run(call("recognize", b"\xff\xd8 any bytes"))
    assert timeout.value.attempts == 3 and fake.count_settles(3) == 3
    fake.reset("slow")
    with pytest.raises(Timeout) as timeout:
        asyncio.run(call("gallery_add", [b"\xff\xd8 image"], ["x"]))
    assert timeout.value.attempts == 1 and fake.count_settles(1) == 1
    assert isinstance(timeout.value, shitu.errors.Unavailable) and ShituError is shitu.errors.ShituError
    assert issubclass(InputError, shitu.errors.InvalidArgument) and issubclass(ServerError, shitu.errors.ShituError)


def test_async_client_runs_calls_at_once_without_threads(fake):
    """Three calls in flight together on one event loop: all three reach the server before any is answered."""
    fake.reset("slow")

    def threads() -> int:  # of this process, less the fake server's request handlers
        return sum("process_request" not in t.name for t in threading.enumerate())

    async def main():
        async with AsyncShituClient(fake.url, timeout=5, retries=0) as c:
            before = threads()
            calls = [asyncio.ensure_future(c.gallery_info()) for _ in range(3)]
            for _ in range(100):
                await asyncio.sleep(0.05)
                if len(fake.requests) == 3:
                    break
            seen = len(fake.requests), threads() - before
            fake.release.set()  # the server's handlers return without an answer: each call fails
            await asyncio.gather(*calls, return_exceptions=True)
            return seen

    assert asyncio.run(main()) == (3, 0)


# --------------------------------------------------------------------------------------------------------------
# results: printing, dicts, drawing; async; no paddle needed
# --------------------------------------------------------------------------------------------------------------
def test_results_print_convert_and_draw(client, gallery, queries):
    img = queries["collage_cat_and_coffee"]
    res = client.recognize(img, gallery=GALLERY)
    text = str(res)
    assert text.startswith("image 0 (760x420):") and "cat " in text and "coffee " in text
    d = res.to_dict()
    assert (
        json.loads(json.dumps(d)) == d and d["width"] == 760 and {r["label"] for r in d["results"]} == {"cat", "coffee"}
    )
    assert ImageRecognitions.from_dict(d) == res
    drawn = client.draw(img, res)
    assert drawn.shape == img.shape and not np.array_equal(drawn, img)
    boxes = draw(img, client.detect(img))
    assert boxes.shape == img.shape and not np.array_equal(boxes, img)


def test_drawn_file_shows_what_the_explanation_left_out(client, gallery, queries, tmp_path):
    """``shitu recognize --explain --draw`` on a client-only install: the file drawing (PIL) shows the dashed
    boxes too (it drew only the answer before)."""
    from shitu.serving.results.draw import draw_file

    photo = tmp_path / "collage.jpg"
    photo.write_bytes(encode(queries["collage_cat_and_coffee"]))
    res = client.recognize(photo, gallery=GALLERY, explain=True, score_thres=0.99)  # every match rejected
    assert res.explanation is not None and res.explanation.searched
    draw_file(photo, res, tmp_path / "why.jpg")
    draw_file(photo, list(res), tmp_path / "plain.jpg")
    from PIL import Image

    why, plain = (np.asarray(Image.open(tmp_path / f"{n}.jpg"), np.int16) for n in ("why", "plain"))
    assert why.shape == plain.shape and np.abs(why - plain).mean() > 0.5


def test_async_client(served, gallery, queries):
    async def main():
        async with AsyncShituClient(served.url) as c:
            return await asyncio.gather(
                c.scenarios(),
                c.gallery_info(gallery=GALLERY),
                c.recognize(queries["rocket_bright_blur"], gallery=GALLERY),
            )

    scenarios, info, rocket = asyncio.run(main())
    assert scenarios and info.count >= 6 and top_label(rocket) == "rocket"


BLOCKER = """
import sys
BLOCKED = ("paddle", "paddlehub", "faiss", "cv2", "PIL")

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Blocker())
for name in BLOCKED:
    sys.modules.pop(name, None)

import shitu.serving.client.sdk as client
res = client.ShituClient(sys.argv[1]).detect(open(sys.argv[2], "rb").read())
assert res.width == 451 and res[-1].is_whole_image, res
# nothing of the engine either (the SDK took its result types and drawing from it before serving/results)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED or m.startswith("shitu.serving.engine"))
print("LOADED", loaded)
"""


def test_client_imports_and_works_without_paddle(served, photos, tmp_path):
    image = tmp_path / "cat.jpg"
    image.write_bytes(encode(photos["cat"]))
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER, served.url, str(image)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "LOADED []" in proc.stdout
