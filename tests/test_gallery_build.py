"""Building galleries from list files / folder trees with an embedding function, and the ``shitu gallery`` CLI."""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from shitu.serving.gallery.build import BuildReport, GalleryBuildError, build_from_entries, build_from_source
from shitu.serving.gallery.list_file import parse_list_file
from shitu.serving.gallery.local import Gallery, GalleryError

DIM = 48


class FakeEmbed:
    """Deterministic embedding: the image shrunk to 4x4 BGR, normalised. Records the batches it sees."""

    def __init__(self, fail_after: int | None = None):
        self.batches: list[int] = []
        self.fail_after = fail_after

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        if self.fail_after is not None and sum(self.batches) >= self.fail_after:
            raise RuntimeError("extractor crashed")
        self.batches.append(len(images))
        out = np.stack(
            [cv2.resize(img, (4, 4), interpolation=cv2.INTER_AREA).astype(np.float32).ravel() for img in images]
        )
        out -= out.mean(axis=1, keepdims=True)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)

    @property
    def images(self) -> int:
        return sum(self.batches)


def make_image(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = cv2.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), (32, 32), interpolation=cv2.INTER_NEAREST)
    assert cv2.imwrite(str(path), img)
    return path


@pytest.fixture()
def images(tmp_path) -> Path:
    root = tmp_path / "data"
    for i in range(12):
        make_image(root / "gallery" / f"{i % 3}" / f"{i}.png", i)
    return root


def write_list(root: Path, lines: list[str], name: str = "list.txt") -> Path:
    p = root / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_build_twice_adds_only_new_images(tmp_path, images):
    lines = [f"gallery/{i % 3}/{i}.png\tlabel {i % 3}" for i in range(10)]
    lst = write_list(images, lines)
    embed = FakeEmbed()
    with Gallery.create(tmp_path / "g", DIM, "Flat") as g:
        report = build_from_source(g, lst, embed, batch_size=4, progress=False)
        assert isinstance(report, BuildReport)
        assert (report.added, report.skipped_existing, report.bad) == (10, 0, [])
        assert max(embed.batches) <= 4 and embed.images == 10
        rec = g.get(report.ids[0])
        assert rec["source"] == "gallery/0/0.png" and rec["label"] == "label 0"
        assert len(rec["content_hash"]) == 64
        # Second run: nothing embedded, nothing added.
        again = build_from_source(g, lst, embed, batch_size=4, progress=False)
        assert (again.added, again.skipped_existing, embed.images) == (0, 10, 10)
        # Two new images in the list: only they are embedded.
        write_list(images, lines + ["gallery/1/10.png\tlabel 1", "gallery/2/11.png\tlabel 2"])
        third = build_from_source(g, lst, embed, batch_size=4, progress=True)
        assert (third.added, third.skipped_existing, embed.images) == (2, 10, 12)
        assert len(g) == 12
        # Each image finds itself.
        img = cv2.imread(str(images / "gallery/2/11.png"))
        assert g.search(embed([img]), k=1)[0][0].id == third.ids[1]


def test_duplicate_images_in_one_build_are_added_once(tmp_path, images):
    lst = write_list(images, ["gallery/0/0.png\ta", "gallery/0/0.png\ta", "gallery/1/1.png\tb"])
    with Gallery.create(tmp_path / "g", DIM, "Flat") as g:
        report = build_from_source(g, lst, FakeEmbed(), progress=False)
        assert (report.added, report.skipped_existing) == (2, 1)


def test_bad_lines_stop_the_build_before_anything_changes(tmp_path, images):
    (images / "broken.jpg").write_bytes(b"this is not a jpeg")
    lst = write_list(
        images,
        [
            "gallery/0/0.png\ta",
            "gallery/0/3.png",  # line 2: missing label
            "gallery/9/missing.png\tb",  # line 3: missing image
            "broken.jpg\tc",  # line 4: not decodable
            "gallery/1/1.png\td",
        ],
    )
    embed = FakeEmbed()
    with Gallery.create(tmp_path / "g", DIM, "Flat") as g:
        with pytest.raises(GalleryBuildError) as ei:
            build_from_source(g, lst, embed, progress=False)
        msg = str(ei.value)
        assert f"{lst}:2: missing label" in msg and f"{lst}:3: image not found" in msg
        assert "nothing was added" in msg
        assert embed.images == 0  # list errors are found before any embedding
        assert len(g) == 0 and g.info()["seq"] == 0

        # Only the undecodable image is bad: found while embedding, still nothing added.
        lst2 = write_list(images, ["gallery/0/0.png\ta", "broken.jpg\tc", "gallery/1/1.png\td"], "l2.txt")
        with pytest.raises(GalleryBuildError, match=r"l2\.txt:2: not a readable image"):
            build_from_source(g, lst2, embed, progress=False)
        assert len(g) == 0

        # skip_bad: good lines are added, bad ones reported with file and line.
        report = build_from_source(g, lst, embed, skip_bad=True, progress=False)
        assert report.added == 2 and len(g) == 2
        assert sorted((Path(src).name, line) for src, line, _ in report.bad) == [
            ("list.txt", 2),
            ("list.txt", 3),
            ("list.txt", 4),
        ]
        assert any("not a readable image" in reason for _, _, reason in report.bad)


def test_embedding_failure_adds_nothing(tmp_path, images):
    lst = write_list(images, [f"gallery/{i % 3}/{i}.png\tx" for i in range(10)])
    with Gallery.create(tmp_path / "g", DIM, "Flat") as g:
        with pytest.raises(RuntimeError, match="extractor crashed"):
            build_from_source(g, lst, FakeEmbed(fail_after=4), batch_size=4, progress=False)
        assert len(g) == 0


def test_build_from_folder_tree_and_entries(tmp_path, images):
    with Gallery.create(tmp_path / "g", DIM, "HNSW32") as g:
        report = build_from_source(g, images / "gallery", FakeEmbed(), progress=False)
        assert report.added == 12
        assert g.label_counts() == {"0": 4, "1": 4, "2": 4}
        assert g.get(report.ids[0])["source"] == "0/0.png"
    entries = parse_list_file(write_list(images, ["gallery/0/0.png\tq"]))
    with Gallery.create(tmp_path / "g2", DIM, "Flat") as g:
        assert build_from_entries(g, entries, FakeEmbed(), progress=False).added == 1
        with pytest.raises(GalleryError, match="expected \\[n, d\\]"):
            build_from_entries(
                g,
                parse_list_file(write_list(images, ["gallery/1/1.png\tq"], "x.txt")),
                lambda imgs: np.zeros(3),
                progress=False,
            )


def test_binary_gallery_build(tmp_path, images):
    def embed_bits(imgs):
        return np.packbits(FakeEmbed()(imgs) > 0, axis=1)  # 48 bits -> 6 bytes

    with Gallery.create(tmp_path / "g", DIM, "Flat", "hamming") as g:
        report = build_from_source(g, images / "gallery", embed_bits, progress=False)
        assert report.added == 12
        img = cv2.imread(str(images / "gallery/0/3.png"))
        hit = g.search(embed_bits([img]), k=1)[0][0]
        assert hit.score == 0 and hit.source == "0/3.png"


# -- CLI -------------------------------------------------------------------------------------------------------


def cli(argv: list[str]) -> int:
    from shitu.serving.cli.gallery import register

    parser = argparse.ArgumentParser(prog="shitu")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture()
def fake_engine(monkeypatch):
    """``shitu.serving.engine.engine.load_engine`` replaced by a fake with the real signature's shape."""
    calls = []

    class Engine:
        embedding_size = DIM
        params = {
            "IndexProcess.index_method": "HNSW32",
            "IndexProcess.dist_type": "IP",
            "IndexProcess.hamming_radius": 100,
            "Limits.max_image_bytes": 20_000_000,
            "Limits.max_pixels": 40_000_000,
        }

        def __init__(self, params):
            self.binary = bool((params or {}).get("RecPostProcess.binarize"))
            self.embedder = FakeEmbed()

        def embed(self, images):
            out = self.embedder(list(images))
            return np.packbits(out > 0, axis=1) if self.binary else out

        def close(self):
            pass

    def load_engine(scenario=None, gallery=None, params=None):
        calls.append({"scenario": scenario, "params": params})
        return Engine(params)

    module = types.ModuleType("shitu.serving.engine.engine")
    module.load_engine = load_engine
    monkeypatch.setitem(sys.modules, "shitu.serving.engine.engine", module)
    return calls


def test_cli_build_add_list_info_search_remove_compact_with_a_fake_engine(tmp_path, images, fake_engine, capsys):
    """Every subcommand's bookkeeping, isolated from the models (the real extractor: the test below)."""
    lst = write_list(images, [f"gallery/{i % 3}/{i}.png\tlabel {i % 3}" for i in range(9)])
    g = str(tmp_path / "g")
    assert (
        cli(
            [
                "gallery",
                "build",
                g,
                str(lst),
                "--no-progress",
                "--index-method",
                "Flat",
                "--param",
                "Global.batch_size=4",
            ]
        )
        == 0
    )
    assert fake_engine[-1]["params"] == {"Global.batch_size": 4}
    out = capsys.readouterr().out
    assert "added 9" in out
    assert cli(["gallery", "build", g, str(lst), "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped_existing"] == 9

    assert (
        cli(
            [
                "gallery",
                "add",
                g,
                str(images / "gallery/0/9.png"),
                str(images / "gallery/1/10.png"),
                "--label",
                "Coca Cola",
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert cli(["gallery", "list", g, "--labels", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"Coca Cola": 2, "label 0": 3, "label 1": 3, "label 2": 3}
    assert cli(["gallery", "list", g, "--label", "Coca Cola", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["source"] for r in rows] == [
        (images / "gallery/0/9.png").as_posix(),
        (images / "gallery/1/10.png").as_posix(),
    ]

    assert cli(["gallery", "search", g, str(images / "gallery/1/10.png"), "-k", "2", "--json"]) == 0
    hit = json.loads(capsys.readouterr().out)["matches"][0]
    assert hit["label"] == "Coca Cola" and hit["id"] == rows[1]["id"]

    assert cli(["gallery", "info", g, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["count"], info["labels"], info["index_method"], info["dim"]) == (11, 4, "Flat", DIM)

    assert cli(["gallery", "remove", g, "--label", "Coca Cola", "--id", "1"]) == 0
    assert "removed 3 items" in capsys.readouterr().out
    assert cli(["gallery", "remove", g, "--id", "1"]) == 1  # nothing left to remove
    assert cli(["gallery", "compact", g]) == 0
    assert "8 items" in capsys.readouterr().out
    assert cli(["gallery", "info", g]) == 0
    assert "removed_pending" in capsys.readouterr().out


def test_cli_errors(tmp_path, images, fake_engine, capsys):
    g = str(tmp_path / "g")
    assert cli(["gallery", "info", g]) == 3
    assert "no such gallery folder" in capsys.readouterr().err
    bad = write_list(images, ["gallery/0/0.png\ta", "gallery/0/1.png"])
    assert cli(["gallery", "build", g, str(bad), "--no-progress"]) == 3
    err = capsys.readouterr().err
    assert f"{bad}:2: missing label" in err and "nothing was added" in err
    assert not fake_engine  # failed before loading any model
    assert cli(["gallery", "build", g, str(bad), "--no-progress", "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert "added 1" in captured.out and f"{bad}:2" in captured.err
    assert cli(["gallery", "add", str(tmp_path / "nope"), str(bad), "--no-progress"]) == 3
    assert cli(["gallery", "remove", g]) == 2
    assert cli(["gallery"]) == 2


def test_cli_hamming_gallery(tmp_path, images, fake_engine, capsys):
    g = str(tmp_path / "g")
    assert (
        cli(
            [
                "gallery",
                "build",
                g,
                str(images / "gallery"),
                "--dist-type",
                "hamming",
                "--index-method",
                "Flat",
                "--no-progress",
            ]
        )
        == 0
    )
    assert fake_engine[-1]["params"] == {"RecPostProcess.binarize": True}
    capsys.readouterr()
    assert cli(["gallery", "info", g, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["metric"], info["dim"], info["count"]) == ("hamming", DIM, 12)
    assert cli(["gallery", "search", g, str(images / "gallery/2/5.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["matches"][0]["score"] == 0


def test_cli_module_imports_nothing_heavy():
    import subprocess

    code = (
        "import sys, argparse; from shitu.serving.cli import gallery as gallery_cli; "
        "p = argparse.ArgumentParser(); gallery_cli.register(p.add_subparsers()); "
        "print(sorted(m for m in ('faiss', 'cv2', 'shitu.serving.engine.engine', 'paddle') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_build_and_search_with_the_real_extractor(tmp_path, photos, queries, capsys):
    """`shitu gallery build` then `shitu gallery search` through the real entry point, real models and faiss."""
    import cv2

    from shitu.serving.cli import main

    tree = tmp_path / "photos"
    for label in ("cat", "coffee", "rocket"):
        (tree / label).mkdir(parents=True)
        cv2.imwrite(str(tree / label / f"{label}.jpg"), photos[label])
    query = tmp_path / "query.jpg"
    cv2.imwrite(str(query), queries["cat_mirrored_crop"])
    g = tmp_path / "g"
    assert main(["gallery", "build", str(g), str(tree), "--no-progress", "--index-method", "Flat", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == 3
    # score_thres -1: every match is listed (centred scores may be negative; the pack's 0.5 keeps only the right
    # one), to see the margin
    assert main(["gallery", "search", str(g), str(query), "-k", "3", "--json", "--param", "score_thres=-1"]) == 0
    matches = json.loads(capsys.readouterr().out)["matches"]
    assert len(matches) == 3
    assert [m["label"] for m in matches][0] == "cat" and matches[0]["score"] > 0.8
    assert matches[0]["score"] > matches[1]["score"] + 0.1  # the right photo, by a margin


def test_cli_build_refuses_a_pixel_bomb_as_a_bad_entry(tmp_path, photos, capsys):
    """The build decodes with the engine's limits: a small PNG declaring 30000 x 30000 pixels is refused before
    decoding (the build used to call cv2.imdecode on it)."""
    import struct
    import zlib

    import cv2

    from shitu.serving.cli import main

    tree = tmp_path / "photos"
    (tree / "cat").mkdir(parents=True)
    (tree / "bomb").mkdir(parents=True)
    cv2.imwrite(str(tree / "cat" / "cat.jpg"), photos["cat"])

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    (tree / "bomb" / "bomb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )
    g = tmp_path / "g"
    code = main(["gallery", "build", str(g), str(tree), "--no-progress", "--index-method", "Flat"])
    err = capsys.readouterr().err
    assert code == 3 and "bomb.png" in err and "more pixels than the limit" in err and "nothing was added" in err
    assert main(["gallery", "build", str(g), str(tree), "--no-progress", "--skip-bad", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == 1
