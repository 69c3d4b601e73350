"""The pack manifest: schema validation with key paths, the built-in manifests, version ranges."""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "plugins"))
import packkit  # noqa: E402

from shitu.plugins import manifest as mf  # noqa: E402
from shitu.plugins import versions  # noqa: E402
from shitu.plugins.errors import ManifestError  # noqa: E402

PACKS = Path(mf.__file__).resolve().parent / "packs"


def _err(data, file=None) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        mf.parse_manifest(data, file=file)
    return info.value


def test_valid_manifest_parses():
    m = mf.parse_manifest(packkit.manifest_dict())
    assert m.name == "testpack" and m.version == "1.0.0"
    assert m.models["recognizer"].embedding_size == 8
    assert m.models["detector"].description["kind"] == "detector"
    assert m.models["recognizer"].description["kind"] == "extractor"
    assert m.params == {"Global": {"threshold": 0.4}, "IndexProcess": {"score_thres": 0.7}}
    assert m.galleries["main"].index_method == "Flat"
    # Gallery defaults come from the pack's IndexProcess params, then the schema.
    assert m.galleries["other"].dist_type == "L2" and m.galleries["other"].index_method == "HNSW32"
    assert m.default_gallery == "main"


def _set(path: str, value):
    def mutate(d):
        keys = re.findall(r"[^.\[\]]+|\[\d+\]", path)
        cur = d
        for k in keys[:-1]:
            cur = cur[int(k[1:-1])] if k.startswith("[") else cur[k]
        last = keys[-1]
        if value is _DEL:
            del cur[last]
        elif last.startswith("["):
            cur[int(last[1:-1])] = value
        else:
            cur[last] = value

    return mutate


_DEL = object()

BAD = [
    ("models.recognizer.files[1].sha256", "abc", "models.recognizer.files[1].sha256: expected 64 hex characters"),
    ("models.detector.files[0].path", "../escape", "models.detector.files[0].path: must be a relative path"),
    ("models.detector.files[0].path", "/etc/passwd", "models.detector.files[0].path: must be a relative path"),
    ("models.detector.trasform_ops", [], "models.detector.trasform_ops: unknown key (did you mean 'transform_ops'?)"),
    ("name", _DEL, "name: required key is missing"),
    ("name", "Bad Name", "name: expected lowercase letters"),
    ("version", 1.0, "version: expected a string, got the number 1.0"),
    ("schema_version", 2, "schema_version: this shitu-hub reads schema_version 1"),
    ("shitu_hub", "0.1", "shitu_hub: expected version clauses"),
    ("params.Global.threshold", 3, "params.Global.threshold: must be <= 1.0"),
    ("params.Global.treshold", 0.5, "params.Global.treshold: unknown parameter"),
    ("params.Global.det_inference_model_dir", "/x", "params.Global.det_inference_model_dir: is set by the registry"),
    ("galleries", {}, "galleries: a pack needs at least one gallery"),
    ("galleries.main.dist_type", "cosine", "galleries.main.dist_type: expected 'IP', 'L2' or 'hamming'"),
    ("default_gallery", "nope", "default_gallery: 'nope' is not one of galleries"),
    ("models.detector.model_file", "other.json", "models.detector.model_file: 'other.json' is not listed"),
    ("models.detector.decoder", "yolo", "models.detector.decoder: expected 'gfl' or 'paddledet'"),
    ("models.recognizer.embedding_size", _DEL, "models.recognizer.embedding_size: required for the recognizer"),
    ("models.recognizer.format", "tflite", "models.recognizer.format: expected 'paddle' or 'onnx'"),
    ("models.recognizer.input_color", "RGBA", "models.recognizer.input_color: expected 'RGB' or 'BGR'"),
    ("models.recognizer.transform_ops", [{"A": 1}], "models.recognizer.transform_ops[0].A: arguments must be"),
    ("models.recognizer.files[0].url", "ftp://x/y", "models.recognizer.files[0].url: expected an http(s) URL"),
    ("models.recognizer.files[0].size", -1, "models.recognizer.files[0].size: must be >= 0"),
    ("models.recognizer.archive", {"url": "https://h/x.tar"}, "models.recognizer.archive.sha256: required key"),
    ("models", {"detector": {}}, "models.recognizer: required key is missing"),
    (
        "galleries.main.files",
        [{"path": "models/det/model.json", "sha256": None}],
        "galleries.main.files[0].path: 'models/det/model.json' is also listed by models.detector",
    ),
    ("models.detector.role", "x", "models.detector.role: unknown key"),  # set by the schema, not by a pack
    ("galleries.main.folder", "imgs", None),  # valid on its own
]


@pytest.mark.parametrize("path,value,expected", BAD, ids=[b[0] + ("-del" if b[1] is _DEL else "") for b in BAD])
def test_bad_manifest_names_the_key(path, value, expected):
    data = packkit.manifest_dict()
    _set(path, value)(data)
    if expected is None:
        mf.parse_manifest(data)
        return
    err = _err(data, file="/x/pack.yaml")
    assert expected in str(err), str(err)
    assert str(err).startswith("/x/pack.yaml: ")


def test_list_file_and_folder_are_exclusive():
    data = packkit.manifest_dict()
    data["galleries"]["main"].update(list_file="g/list.txt", folder="g/imgs")
    assert "galleries.main.folder: give either list_file or folder" in str(_err(data))


def test_duplicate_yaml_key_and_bad_yaml(tmp_path):
    text = yaml.safe_dump(packkit.manifest_dict(), sort_keys=False) + "name: again\n"
    (tmp_path / "pack.yaml").write_text(text)
    with pytest.raises(ManifestError, match="duplicate key 'name'"):
        mf.read_manifest(tmp_path)
    (tmp_path / "pack.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        mf.read_manifest(tmp_path)
    (tmp_path / "pack.yaml").write_text("")
    with pytest.raises(ManifestError, match="empty"):
        mf.read_manifest(tmp_path)


def test_reading_a_manifest_imports_no_code(tmp_path):
    # YAML tags that would construct Python objects are refused by the safe loader.
    (tmp_path / "pack.yaml").write_text("schema_version: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        mf.read_manifest(tmp_path)


def test_extension_keys_are_ignored():
    data = packkit.manifest_dict()
    data["x-vendor"] = {"anything": 1}
    data["models"]["detector"]["x-note"] = "ok"
    mf.parse_manifest(data)


@pytest.mark.parametrize(
    "version,spec,ok",
    [
        ("0.1.0", ">=0.1.0,<0.2", True),
        ("0.2.0", ">=0.1.0,<0.2", False),
        ("0.1.5", "==0.1.*", True),
        ("0.10.0", "==0.1.*", False),
        ("1.2", "~=1.1", True),
        ("2.0", "~=1.1", False),
        ("0.1.0rc1", ">=0.1.0", False),
        ("0.1.0", "!=0.1.0", False),
        ("1.10", ">1.9", True),
    ],
)
def test_version_ranges(version, spec, ok):
    assert versions.version_matches(version, spec) is ok


def test_version_ordering():
    given = ["1.10.0", "1.2.0", "1.0.0rc1", "1.0.0", "1.0.0.post1", "0.9"]
    assert sorted(given, key=versions.version_key) == ["0.9", "1.0.0rc1", "1.0.0", "1.0.0.post1", "1.2.0", "1.10.0"]


# -- the built-in manifests ----------------------------------------------------------------------------------------
def test_builtin_manifests_are_valid():
    names = {}
    for path in sorted(PACKS.glob("*/pack.yaml")):
        m = mf.read_manifest(path)
        names[m.name] = m
    assert set(names) == {"general-lite", "general", "product", "vehicle", "logo", "anime"}
    for m in names.values():
        assert versions.version_matches("0.1.0", m.shitu_hub)
        assert m.default_gallery in m.galleries


def test_general_lite_manifest_matches_its_model_folders():
    from shitu.model_spec import ModelSpec

    m = mf.read_manifest(PACKS / "general_lite")
    notice = (PACKS / "general_lite" / "models" / "NOTICE.md").read_text()
    rows = re.findall(r"\|\s*(det|rec)\s*\|\s*(\S+)\s*\|\s*([0-9a-f]{64})", notice)
    published = {(folder, fname): h for folder, fname, h in rows}
    assert len(published) == 6
    for role, sub in (("detector", "det"), ("recognizer", "rec")):
        entry = m.models[role]
        assert entry.path == f"models/{sub}"
        hashes = {f.path: f.sha256 for f in entry.files}
        for (folder, fname), h in published.items():
            if folder == sub:
                assert hashes[fname] == h, (role, fname)
        # The manifest's description is the folder's shitu_model.yml (a test-enforced copy).
        folder_spec = ModelSpec.from_dir(PACKS / "general_lite" / entry.path)
        manifest_spec = ModelSpec.from_dict(copy.deepcopy(entry.description), PACKS / "general_lite" / entry.path)
        assert folder_spec == manifest_spec, f"{role}: pack.yaml and {sub}/shitu_model.yml disagree"
    assert m.params == {
        "Global": {
            "threshold": 0.2,
            "max_det_results": 5,
            "min_box_ratio": 0.1,
            "framing": "main_box",
            "crop_padding": 0.0,
        },
        "RecPostProcess": {"pooling": "gem", "gem_power": 3.0, "centering": "centering.npy"},
        "RecPreProcess": {
            "transform_ops": [
                {"PadToSquare": {"value": [103.53, 116.28, 123.675]}},
                *ModelSpec.from_dir(PACKS / "general_lite" / "models" / "rec").transform_ops,
            ]
        },
        "IndexProcess": {"score_thres": "auto", "index_method": "Flat", "dist_type": "IP"},
    }
    assert "centering.npy" in {f.path for f in m.models["recognizer"].files}  # listed, so installs check its hash
    assert list(m.galleries) == ["demo"] and m.default_gallery == "demo"
    assert m.models["recognizer"].embedding_size == 512


@pytest.mark.parametrize(
    "pack,det,rec,dim",
    [
        ("general", "picodet_PPLCNet_x2_5_mainbody_lite_v1.0", "general_PPLCNetV2_base_pretrained_v1.0", 512),
        ("product", "ppyolov2_r50vd_dcn_mainbody_v1.0", "product_ResNet50_vd_aliproduct_v1.0", 512),
        ("vehicle", "ppyolov2_r50vd_dcn_mainbody_v1.0", "vehicle_cls_ResNet50_CompCars_v1.0", 512),
        ("logo", "ppyolov2_r50vd_dcn_mainbody_v1.0", "logo_rec_ResNet50_Logo3K_v1.0", 512),
        ("anime", "ppyolov2_r50vd_dcn_mainbody_v1.0", "cartoon_rec_ResNet50_iCartoon_v1.0", 2048),
    ],
)
def test_official_pack_manifests(pack, det, rec, dim):
    m = mf.read_manifest(PACKS / pack)
    d, r = m.models["detector"], m.models["recognizer"]
    assert (d.name, r.name, r.embedding_size) == (det, rec, dim)
    assert d.description["decoder"] == "paddledet"
    for entry in (d, r):
        assert entry.archive is not None
        assert entry.archive.url.startswith("https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/rec/models/")
        assert entry.archive.filename == f"{entry.name}_infer.tar"
        assert entry.archive.root == f"{entry.name}_infer"
        # No hash is published by PaddleClas: marked unverified, never invented.
        assert entry.archive.sha256 is None
        assert {f.path for f in entry.files if not f.optional} == {"inference.pdmodel", "inference.pdiparams"}
    assert m.params["Global"]["threshold"] == 0.2
    assert m.params["IndexProcess"]["score_thres"] == 0.5
    ops = [next(iter(op)) for op in r.description["transform_ops"]]
    if pack == "anime":
        assert r.description["transform_ops"][0] == {"ResizeImage": {"resize_short": 256}}
        assert r.description["transform_ops"][1] == {"CropImage": {"size": 224}}
    else:
        assert ops == ["ResizeImage", "NormalizeImage", "ToCHWImage"]


def test_writing_packs_example_is_a_valid_manifest():
    text = (Path(__file__).resolve().parent.parent / "docs" / "writing-packs.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(schema_version: 1.*?)```", text, re.S).group(1)
    # The example abbreviates hashes as "3f1c...64 hex..."; give them 64 hex characters.
    block = re.sub(r"\b([0-9a-f]{4})\.\.\.64 hex\.\.\.", lambda m: m.group(1) * 16, block)
    m = mf.parse_manifest(mf.load_yaml(block))
    assert m.name == "my-shoes" and m.version == "1.2.0"
    assert m.models["recognizer"].embedding_size == 512
    assert m.models["detector"].archive.filename == "picodet_PPLCNet_x2_5_mainbody_lite_v1.0_infer.tar"
    assert m.galleries["catalogue"].index_method == "Flat"
    assert m.galleries["returns"].index_method == "HNSW32"
    assert m.default_gallery == "catalogue"
