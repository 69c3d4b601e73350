"""The one CLI toolkit: exit codes through the guard, the validated ``--param`` parser, the ``--gallery`` rule,
the token variable and table printing -- tested through the real ``shitu`` entry point where a command is run."""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pytest

from shitu.serving.cli import main
from shitu.serving.cli.toolkit import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    TOKEN_ENV,
    UsageError,
    guard,
    param_overrides,
    resolve_gallery,
    table,
    token_from,
)


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "cup").mkdir(parents=True)
    cv2.imwrite(str(root / "cup" / "a.png"), np.full((48, 48, 3), 90, np.uint8))
    return root


def test_gallery_build_with_a_misspelt_param_is_a_usage_error_not_a_traceback(tmp_path, image_tree, capsys):
    """Before the one toolkit, ``shitu gallery build --param thresold=0.3`` raised a traceback (unvalidated)."""
    code = main(["gallery", "build", str(tmp_path / "g"), str(image_tree), "--param", "thresold=0.3"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert "thresold" in err and "did you mean threshold" in err and "Traceback" not in err
    assert not (tmp_path / "g").exists()  # refused before anything was created


@pytest.mark.parametrize(
    "argv",
    [["gallery", "build", "G", "SRC", "--param", "threshold"], ["recognize", "x.jpg", "--param", "threshold=[1"]],
)
def test_malformed_params_exit_2_in_every_command(argv, tmp_path, capsys):
    argv = [a.replace("G", str(tmp_path / "g")).replace("SRC", str(tmp_path)) if a in ("G", "SRC") else a for a in argv]
    assert main(argv) == EXIT_USAGE
    assert "--param" in capsys.readouterr().err


def test_param_overrides_checks_names_and_types():
    assert param_overrides(["threshold=0.5", "IndexProcess.return_k=3"]) == {
        "threshold": 0.5,
        "IndexProcess.return_k": 3,
    }
    with pytest.raises(UsageError, match="return_k"):
        param_overrides(["IndexProcess.return_k=many"])


def test_one_gallery_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_gallery(None) is None
    assert resolve_gallery("shop") == "shop"  # a name of the scenario pack
    assert resolve_gallery("./shop") == Path("./shop")  # a path separator: a folder
    assert resolve_gallery("my gallery") == Path("my gallery")  # not a valid name: a folder
    (tmp_path / "local").mkdir()
    assert resolve_gallery("local") == Path("local")  # an existing folder wins


def test_token_from_flag_then_environment(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert token_from(argparse.Namespace()) is None
    monkeypatch.setenv(TOKEN_ENV, "env-token")
    assert token_from(argparse.Namespace(token=None)) == "env-token"
    assert token_from(argparse.Namespace(token="flag")) == "flag"


def test_guard_maps_errors_to_exit_codes_and_lets_bugs_through(capsys):
    from shitu.serving.gallery.errors import GalleryError

    def raising(exc):
        return guard(lambda args: (_ for _ in ()).throw(exc))

    assert raising(UsageError("bad"))(argparse.Namespace()) == EXIT_USAGE
    assert raising(GalleryError("broken gallery"))(argparse.Namespace()) == EXIT_ERROR
    assert raising(KeyboardInterrupt())(argparse.Namespace()) == EXIT_INTERRUPTED
    assert "error: broken gallery" in capsys.readouterr().err
    with pytest.raises(ZeroDivisionError):
        raising(ZeroDivisionError("a bug"))(argparse.Namespace())


def test_table_aligns_columns():
    assert table([["a", 1], ["bbb", None]], ["name", "n"]).splitlines() == ["name  n", "----  -", "a     1", "bbb"]
    assert table([["1", "22"], ["333", "4"]], right=True).splitlines() == ["  1  22", "333   4"]
