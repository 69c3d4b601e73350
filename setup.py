"""Packaging for shitu-hub.

The design fixes the top-level folders (``serving/``, ``plugins/``, ``params/``,
``hub_modules/``); they install under one root package ``shitu`` through
``package_dir`` so nothing installs a bare top-level ``serving`` package.
"""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent

# Folder on disk -> import name under the ``shitu`` root.
ROOTS = {
    "shitu": "shitu",
    "shitu.serving": "serving",
    "shitu.plugins": "plugins",
    "shitu.params": "params",
    "shitu.hub_modules": "hub_modules",
}


def _packages() -> tuple[list[str], dict[str, str]]:
    packages, package_dir = [], {}
    for name, folder in ROOTS.items():
        package_dir[name] = folder
        for init in sorted((HERE / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(HERE / folder)
            packages.append(".".join([name, *rel.parts]) if rel.parts else name)
    return packages, package_dir


def _pack_data() -> dict[str, list[str]]:
    """Data-only packages, every file: the built-in scenario packs' folders (manifests, models, galleries) and the
    web page's files."""
    out = {}
    packs = HERE / "plugins" / "packs"
    for folder in sorted(p for p in packs.rglob("*") if p.is_dir()) + [packs, HERE / "serving" / "hub" / "web"]:
        if "__pycache__" not in folder.parts:
            out[".".join(["shitu", *folder.relative_to(HERE).parts])] = ["*"]
    return out


PACKAGES, PACKAGE_DIR = _packages()
PACK_DATA = _pack_data()
PACKAGES += sorted(set(PACK_DATA) - set(PACKAGES))  # listed, so setuptools installs them without warnings
VERSION = {}
exec((HERE / "shitu" / "_version.py").read_text(), VERSION)

# paddlehub 2.4.0 imports only with these pins (measured on Python 3.11).
SERVING_PINS = [
    "paddlehub==2.4.0",
    "paddlenlp==2.8.1",
    "protobuf==3.20.3",
    "huggingface_hub==0.36.2",
    "aistudio-sdk==0.2.6",
    "datasets==3.6.0",
    "gradio==6.17.3",
    "gunicorn>=20",
    "prometheus_client>=0.16",  # GET /metrics (multi-process mode across gunicorn workers)
]

#: The client install: pure-Python or small wheels only (no paddle, OpenCV or faiss).
CLIENT = [
    "numpy>=1.24",
    "requests>=2.28",
    "httpx>=0.27",  # AsyncShituClient (pure Python)
    "pyyaml>=6",
    "tqdm>=4.60",
    "Pillow>=9",
    "pydantic>=2",  # pack manifests (plugins/manifest.py)
    "packaging>=22",  # PEP 440 versions and ranges of packs
    "filelock>=3.12",  # the pack store's writer lock
]
#: The in-process engine: paddle.inference, images, search.
ENGINE = [
    "paddlepaddle==3.3.1",
    # paddlehub depends on opencv-python; the headless wheel would share its cv2/ folder, so use this one.
    "opencv-python>=4.8",
    "faiss-cpu>=1.8",
    # Global.det_backend / rec_backend `auto`: the embedded models run fastest on onnxruntime (same answers).
    "onnxruntime>=1.17",
    "pydantic>=2",  # the typed request models of the hub services (shitu.serving.hub.request_models)
    # `shitu plugins quantize`: onnxruntime.quantization needs onnx, sympy and ml_dtypes; paddle2onnx converts
    # paddle-only models (official PP-ShiTu exports) first.
    "onnx>=1.15",
    "sympy>=1.12",
    "ml_dtypes>=0.4",
    "paddle2onnx>=1.2",
]

setup(
    name="shitu-hub",
    version=VERSION["__version__"],
    description="Image recognition as a service: mainbody detection, feature extraction and gallery search "
    "as PaddleHub modules (the PP-ShiTu design).",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    include_package_data=True,
    package_data={
        **PACK_DATA,
        "shitu.hub_modules": ["*/config.json", "*.json"],
    },
    # `pip install shitu-hub` is the client: the SDK, `shitu ... --server URL`, `shitu plugins`, drawing (PIL).
    install_requires=CLIENT,
    extras_require={
        # `pip install "shitu-hub[serving]"`: the engine (paddle.inference, OpenCV, faiss) and PaddleHub serving.
        "serving": ENGINE + SERVING_PINS,
        "onnx": ["onnxruntime>=1.17"],  # kept for old install lines: `serving` now brings onnxruntime
        # Galleries on Milvus (milvus://host:port/collection). pymilvus 2.6+ needs protobuf>=5, which paddlehub's
        # protobuf==3.20.3 pin excludes; 2.5 speaks the same gRPC API to Milvus 2.5 / 2.6 servers.
        "milvus": ["pymilvus>=2.5.18,<2.6"],
        # The demo's photographs ship in these wheels.
        "demo": ["scikit-image>=0.22", "scikit-learn>=1.3"],
        "dev": ENGINE
        + SERVING_PINS
        + [
            "onnxruntime>=1.17",
            "pytest>=8",
            # Random test order by default (the suite passes in any order); `-p no:randomly` turns it off.
            "pytest-randomly>=3.15",
            "psutil>=5.9",
            "hypothesis>=6.100",
            "scikit-image>=0.22",
            "scikit-learn>=1.3",
            # drives the Debian chromium in the web page's browser test (never downloads a browser)
            "playwright>=1.40",
            # The Milvus gallery tests: the client, and milvus-lite's server (its own protobuf: `make milvus-lite`).
            "pymilvus>=2.5.18,<2.6",
            "milvus-lite==3.2.2",
            # the HTTP API's OpenAPI description checked, and fuzzed against a real `shitu serve` (tests/test_openapi.py)
            "openapi-spec-validator>=0.7",
            "schemathesis>=4.30",
            # make lint (run by make test)
            "ruff>=0.15",
            "mypy>=1.10",
            "import-linter>=2.0",
            # make docs (run by make test): the documentation site, built with --strict
            "mkdocs>=1.6",
            "mkdocs-material>=9.5",
        ],
    },
    entry_points={"console_scripts": ["shitu=shitu.serving.cli:main"]},
)
