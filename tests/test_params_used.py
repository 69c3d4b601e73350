"""Every parameter the schema accepts is read by the product, and the ones that used to be ignored now act:
``DetPreProcess.transform_ops`` / ``RecPreProcess.transform_ops``, per-request ``IndexProcess.hamming_radius``,
and ``NormalizeImage(output_fp16=True)`` (real models, real faiss)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from shitu.model_spec import DEFAULT_REC_OPS, ModelSpec
from shitu.params import merge
from shitu.params.schema import FIELDS
from shitu.serving.engine.transforms import Transforms
from shitu.serving.gallery import Gallery

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("serving", "hub_modules", "plugins", "params", "shitu")
#: Parameters read through a computed name, with the source text that reads them.
COMPUTED = {
    "Global.det_backend": 'params[f"Global.{which}_backend"]',
    "Global.rec_backend": 'params[f"Global.{which}_backend"]',
}
#: Schema tables: a subscript of these reads a parameter's definition, not its value.
SCHEMA_TABLES = {"BY_NAME", "SHORT"}


def _product_files() -> list[Path]:
    return [p for folder in PRODUCT for p in sorted((ROOT / folder).rglob("*.py"))]


def _names_read(tree: ast.AST) -> set[str]:
    """String constants used where a value is read: ``x["name"]`` (not a schema table) and ``x.get("name")``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            table = node.value.id if isinstance(node.value, ast.Name) else None
            if (
                isinstance(node.slice, ast.Constant)
                and isinstance(node.slice.value, str)
                and table not in SCHEMA_TABLES
            ):
                names.add(node.slice.value)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return names


def test_every_schema_field_is_read_somewhere():
    """A parameter the schema accepts but no product code reads is a lie to the user: this fails for it. Only a
    read of its value counts (``params["Section.key"]``, ``.get("Section.key")``): a name quoted in a tuple, a
    docstring or a schema lookup (``BY_NAME[...]``) does not."""
    files = _product_files()
    read = set().union(*(_names_read(ast.parse(p.read_text(encoding="utf-8"))) for p in files))
    source = "\n".join(p.read_text(encoding="utf-8") for p in files)
    unread = [f.name for f in FIELDS if (COMPUTED[f.name] not in source if f.name in COMPUTED else f.name not in read)]
    assert unread == [], f"schema fields no product code reads: {unread}"


def test_names_only_quoted_do_not_count_as_read():
    """The rule itself: a tuple of names, a docstring and a schema lookup read nothing; a subscript does."""
    quoted = ast.parse('NAMES = ("Global.threshold",)\n"""Global.threshold"""\nBY_NAME["Global.threshold"].default')
    assert _names_read(quoted) == set()
    assert _names_read(ast.parse('p["Global.threshold"]; q.get("IndexProcess.labels")')) == {
        "Global.threshold",
        "IndexProcess.labels",
    }


def test_rec_and_det_transform_ops_replace_the_model_folders(models_dir, engine, photos):
    from shitu.serving.engine.engine import Engine

    det_ops = [
        {"DetResize": {"interp": 2, "keep_ratio": False, "target_size": [320, 320]}},
        {"DetNormalizeImage": {"is_scale": True, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}},
        {"DetPermute": {}},
    ]
    rec_ops = [dict(op) for op in DEFAULT_REC_OPS]
    rec_ops[0] = {"ResizeImage": {"size": [160, 160], "interpolation": "bilinear", "backend": "cv2"}}
    custom = Engine(
        ModelSpec.from_dir(models_dir / "det"),
        ModelSpec.from_dir(models_dir / "rec"),
        merge({"DetPreProcess": {"transform_ops": det_ops}, "RecPreProcess": {"transform_ops": rec_ops}}),
    )
    try:
        assert custom.detector.transforms.config == det_ops
        assert custom.extractor.transforms.config == rec_ops
        img = photos["cat"]
        assert custom.extractor.transforms(img).image.shape == (3, 160, 160)
        mine, default = custom.embed([img])[0], engine.embed([img])[0]
        assert not np.allclose(mine, default, atol=1e-3)  # the model saw a different input
        assert float(mine @ default) > 0.5  # ... of the same cat
    finally:
        custom.close()


def test_normalize_image_output_fp16_is_kept():
    """``output_fp16`` used to be cast back to float32 at the end of the pipeline."""
    ops = [{"ResizeImage": {"size": [32, 32]}}, {"NormalizeImage": {"output_fp16": True}}, {"ToCHWImage": None}]
    out = Transforms(ops)(np.full((40, 50, 3), 128, np.uint8)).image
    assert out.dtype == np.float16 and out.shape == (3, 32, 32)
    ops[1] = {"NormalizeImage": {}}
    assert Transforms(ops)(np.full((40, 50, 3), 128, np.uint8)).image.dtype == np.float32


def test_per_request_hamming_radius_narrows_and_widens(engine, tmp_path):
    """``IndexProcess.hamming_radius`` per request used to be accepted and ignored (the gallery's own applied)."""
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 256, (20, 8), dtype=np.uint8)
    with Gallery.create(tmp_path / "bin", 64, index_method="Flat", dist_type="hamming", hamming_radius=10) as g:
        g.add(bits, [f"item{i}" for i in range(20)])
        q = bits[:1].copy()
        q[0, 0] ^= 0b111  # 3 bits away from item0
        far = {"score_thres": 1000.0, "return_k": 20}
        assert [m.label for m in engine.search(q, gallery=g, hamming_radius=2, **far)[0]] == []
        near = engine.search(q, gallery=g, hamming_radius=3, **far)[0]
        assert [m.label for m in near] == ["item0"] and near[0].score == 3
        wide = engine.search(q, gallery=g, hamming_radius=64, **far)[0]
        assert len(wide) == 20  # wider than the gallery's own radius of 10
        # Without an override the engine's value applies (schema default 100 here), not the gallery's stored 10.
        assert engine.params["IndexProcess.hamming_radius"] == 100
        assert len(engine.search(q, gallery=g, **far)[0]) == 20
        assert len(g.search(q, 20)[0]) == 1  # the gallery alone: its own radius


def test_hub_module_params_hold_only_what_differs_from_the_schema():
    """``hub_modules/*/params.py`` used to restate schema defaults (two places to change one default)."""
    import importlib

    from shitu.hub_modules import MODULES
    from shitu.params import flatten
    from shitu.params.schema import BY_NAME

    for name in MODULES:
        own = flatten(importlib.import_module(f"shitu.hub_modules.{name}.params").get_default_params())
        same = [k for k, v in own.items() if BY_NAME[k].default == v]
        assert same == [], f"{name}/params.py repeats schema defaults: {same}"
