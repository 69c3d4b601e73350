"""``shitu plugins``: the argparse wiring and the human-readable tables."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "plugins"))
import packkit  # noqa: E402
from packkit import home  # noqa: E402,F401  (autouse: a fresh SHITU_HOME per test)

from shitu.plugins import registry  # noqa: E402
from shitu.serving.cli import plugins as cli  # noqa: E402


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_register_adds_plugins_to_a_main_parser():
    parser = argparse.ArgumentParser(prog="shitu")
    sub = parser.add_subparsers(dest="command")
    cli.register(sub)
    for argv in (
        ["plugins", "list"],
        ["plugins", "info", "general-lite"],
        ["plugins", "verify"],
        ["plugins", "install", "x", "--from", "a.tar", "--from", "b.tar", "--trust", "--sha256", "0" * 64],
        ["plugins", "remove", "x", "--all"],
        ["plugins", "use", "x", "1.0"],
        ["plugins", "rollback", "x"],
    ):
        args = parser.parse_args(argv)
        assert callable(args.func)
    args = parser.parse_args(["plugins", "install", "p", "--from", "a.tar", "--from", "b.tar"])
    assert args.from_files == ["a.tar", "b.tar"]
    assert parser.parse_args(["plugins"]).func(None) == 2


def test_list_prints_a_table(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "SOURCE", "STATE", "TITLE"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    row = next(line for line in lines if " general-lite " in line)
    assert row.startswith("*D") and "builtin" in row and "ready" in row
    assert "not installed" in next(line for line in lines if " product " in line)
    assert "default pack (general-lite)" in out


def test_list_json(capsys):
    code, out, _ = run(capsys, "list", "--json")
    rows = json.loads(out)
    assert code == 0 and {r["name"] for r in rows} >= {"general-lite", "general", "anime"}


def test_info_prints_tables(capsys):
    code, out, _ = run(capsys, "info", "general-lite")
    assert code == 0
    assert "FIELD" in out and "general-lite" in out and "ready" in out
    model_header = next(line for line in out.splitlines() if line.startswith("MODEL"))
    assert model_header.split() == ["MODEL", "NAME", "FORMAT", "DIM", "DECODER", "FILES", "PRESENT", "FROM"]
    assert "nanodet-g-backbone-embed" in out and "4/4" in out
    assert "*demo" in out and "Flat" in out
    assert "IndexProcess.score_thres" in out and '"auto"' in out

    code, out, _ = run(capsys, "info", "vehicle")
    assert code == 0 and "vehicle_cls_ResNet50_CompCars_v1.0" in out and "model files not installed" in out
    assert "shitu plugins install vehicle --from ppyolov2_r50vd_dcn_mainbody_v1.0_infer.tar" in out


def test_verify_prints_a_table_and_fails_on_problems(tmp_path, capsys):
    code, out, _ = run(capsys, "verify")
    assert code == 0 and "ok: 10 file(s) in 1 pack(s) verified" in out
    assert out.splitlines()[0].split() == ["PACK", "VERSION", "FILE", "STATUS", "DETAIL"]

    src = packkit.make_pack(tmp_path / "src")
    code, out, _ = run(capsys, "install", str(src), "--no-progress")
    assert code == 0 and "installed testpack 1.0.0" in out
    root = registry.get_pack("testpack").root
    (root / "models" / "det" / "model.json").write_bytes(b"det graph 1.0.X")  # same size, other content
    code, out, _ = run(capsys, "verify", "testpack")
    assert code == 1
    assert "MISMATCH" in out and "models/det/model.json" in out and "1 problem(s)" in out


def test_install_use_rollback_remove(tmp_path, capsys):
    for version in ("1.0.0", "2.0.0"):
        assert (
            run(capsys, "install", str(packkit.make_pack(tmp_path / version, version=version)), "--no-progress")[0] == 0
        )
    code, out, _ = run(capsys, "use", "testpack", "1.0.0")
    assert code == 0 and "using testpack 1.0.0" in out
    assert registry.default_pack_name() == "testpack"
    code, out, _ = run(capsys, "list", "--all")
    rows = [line for line in out.splitlines() if " testpack " in line]
    assert rows[0].startswith("*D") and "1.0.0" in rows[0] and not rows[1].startswith("*")
    code, out, _ = run(capsys, "rollback", "testpack")
    assert code == 0 and "back at 2.0.0" in out
    code, _, err = run(capsys, "remove", "testpack")
    assert code == 2 and "or --all" in err
    assert run(capsys, "remove", "testpack", "1.0.0")[0] == 0
    assert run(capsys, "remove", "testpack", "--all")[0] == 0
    code, _, err = run(capsys, "info", "testpack")
    assert code == 3 and err.startswith("error: no pack named 'testpack'")


def test_errors_are_one_line_messages(tmp_path, capsys):
    code, _, err = run(capsys, "install", str(tmp_path / "nothing-here"))
    assert code == 3 and err.startswith("error: ") and "not a pack folder" in err


def test_module_entry_point(home):
    proc = subprocess.run(
        [sys.executable, "-m", "shitu", "plugins", "list"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "SHITU_HOME": str(home)},
        timeout=120,
    )
    assert proc.returncode == 0 and "general-lite" in proc.stdout
