"""``shitu plugins ...``: list, inspect, install, remove, verify and switch scenario packs.

``register(subparsers)`` adds the ``plugins`` command to the main ``shitu`` parser; ``main(argv)`` runs it alone
(``python -m shitu plugins list``). Every subcommand sets ``func(args) -> int`` (the exit code, as the main
``shitu`` command uses them): 0 ok, 1 problems found (``verify``), 2 bad usage, 3 an error (printed to stderr as
``error: ...``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from shitu.serving.cli.toolkit import EXIT_NOTHING as EXIT_PROBLEMS
from shitu.serving.cli.toolkit import EXIT_USAGE, guard
from shitu.serving.cli.toolkit import table as _table


def _out(text: str = "") -> None:
    print(text, file=sys.stdout)


# -- subcommands ---------------------------------------------------------------------------------------------------
@guard
def cmd_list(args: argparse.Namespace) -> int:
    from shitu.plugins import registry

    packs = registry.list_packs()
    if not args.all:
        packs = [p for p in packs if p.current or p.source == "store" or p.error]
    if args.json:
        _out(json.dumps([p.to_dict() for p in packs], indent=2))
        return 0
    rows = []
    for p in packs:
        flags = "".join(["*" if p.current else " ", "D" if p.default and p.current else " "])
        if p.error:
            state = "broken"
        elif not p.compatible:
            state = "incompatible"
        else:
            state = "ready" if p.available else ("damaged: verify" if p.source == "store" else "not installed")
        rows.append([flags, p.name, p.version, p.source, state, p.title or (p.error or "")[:60]])
    _out(_table(rows, ["", "NAME", "VERSION", "SOURCE", "STATE", "TITLE"]))
    _out()
    _out(
        f"* current version of a pack   D default pack ({registry.default_pack_name()})"
        + ("" if args.all else "   --all: every discovered version")
    )
    broken = [p for p in packs if p.error]
    for p in broken:
        _out(f"broken: {p.name} ({p.source}): {p.error}")
    return 0


@guard
def cmd_info(args: argparse.Namespace) -> int:
    from shitu.plugins import registry

    name = args.name or registry.default_pack_name()
    pack = registry.find_pack(name, args.version)
    if args.json:
        _out(
            json.dumps(
                {
                    "name": pack.name,
                    "version": pack.version,
                    "source": pack.source,
                    "root": str(pack.root),
                    "available": pack.is_available(),
                    "compatible": pack.compatible,
                    "manifest": pack.manifest,
                },
                indent=2,
                default=str,
            )
        )
        return 0
    about = [
        ["name", pack.name],
        ["version", pack.version],
        ["title", pack.title],
        ["source", pack.source],
        ["folder", pack.root],
        ["license", pack.license],
        ["shitu-hub", pack.shitu_hub + ("" if pack.compatible else "  (NOT this version)")],
        ["state", "ready" if pack.is_available() else "model files not installed"],
        ["default pack", "yes" if registry.default_pack_name() == pack.name else "no"],
    ]
    if pack.record:
        about += [["installed", pack.record.get("installed_at", "")], ["from", pack.record.get("source", "")]]
    _out(_table(about, ["FIELD", "VALUE"]))
    if pack.description:
        _out()
        _out(pack.description)
    _out()
    rows = []
    for role, m in pack.models.items():
        present = sum((pack.root / m.path / f.path).is_file() for f in m.files)
        unverified = sum(f.sha256 is None for f in m.files)
        rows.append(
            [
                role,
                m.name,
                m.format,
                m.embedding_size or "-",
                m.description.get("decoder") or "-",
                f"{present}/{len(m.files)}" + (f" ({unverified} without sha256)" if unverified else ""),
                m.archive.url if m.archive else m.path,
            ]
        )
    _out(_table(rows, ["MODEL", "NAME", "FORMAT", "DIM", "DECODER", "FILES PRESENT", "FROM"]))
    _out()
    rows = [
        [
            ("*" if g.name == pack.default_gallery else " ") + g.name,
            g.title,
            g.index_method,
            g.dist_type,
            g.embedding_size,
            g.dir(),
        ]
        for g in pack.galleries.values()
    ]
    _out(_table(rows, ["GALLERY", "TITLE", "INDEX", "METRIC", "DIM", "FOLDER"]))
    if pack.params:
        _out()
        rows = [[f"{s}.{k}", json.dumps(v)] for s, sec in pack.params.items() for k, v in sec.items()]
        _out(_table(rows, ["PARAMETER", "VALUE"]))
    if not pack.is_available():
        _out()
        _out(pack.fetch_instructions())
    return 0


@guard
def cmd_install(args: argparse.Namespace) -> int:
    from shitu.plugins import registry

    info = registry.install(
        args.source,
        name=args.name,
        trust=args.trust,
        sha256=args.sha256 or None,
        progress=not args.no_progress,
        from_files=args.from_files or None,
    )
    _out(f"installed {info.name} {info.version} into {info.root} (now current)")
    if args.use:
        registry.use(info.name, info.version)
        _out(f"{info.name} is now the default pack")
    if not args.no_galleries:
        _build_galleries(info.name, info.version, progress=not args.no_progress)
    return 0


def _build_galleries(name: str, version: str, progress: bool) -> None:
    """Build the galleries the pack brings (``list_file`` / ``folder`` / ``vectors_file``) that have no folder yet;
    a failure is reported, not fatal: the gallery is built on first use (or by ``shitu gallery build``)."""
    from shitu.plugins import registry

    pack = registry.get_pack(name, version)
    todo = [g for g in pack.galleries.values() if g.source() is not None]
    if not todo:
        return
    try:
        from shitu.serving.engine.engine import load_engine
        from shitu.serving.gallery.pack_gallery import ensure_built, is_built

        todo = [g for g in todo if not is_built(g)]
        if not todo:
            return
        engine = load_engine(name)
        try:
            for g in todo:
                ensure_built(g, engine.embed, engine.embedding_size, progress=progress, identity=engine.maker_of(g))
                _out(f"gallery {name}/{g.name} built from {g.source().name} into {g.dir()}")
        finally:
            engine.close()
    except Exception as exc:  # noqa: BLE001 -- the pack is installed; its galleries can be built later
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        print(
            f"warning: galleries of {name} not built now ({first}); they are built on first use, or run "
            f"`shitu gallery build --scenario {name} --gallery NAME`",
            file=sys.stderr,
        )


@guard
def cmd_remove(args: argparse.Namespace) -> int:
    from shitu.plugins import registry

    if args.version is None and not args.all:
        print(f"error: say which version of {args.name!r} to remove, or --all", file=sys.stderr)
        return EXIT_USAGE
    if args.version is not None and args.all:
        print("error: give a version or --all, not both", file=sys.stderr)
        return EXIT_USAGE
    removed = registry.uninstall(args.name, None if args.all else args.version)
    _out(f"removed {args.name} {', '.join(removed)}")
    return 0


@guard
def cmd_verify(args: argparse.Namespace) -> int:
    from shitu.plugins import registry, runtime_check

    if args.name:
        targets = [(args.name, args.version)]
    else:
        targets = [
            (p.name, p.version)
            for p in registry.list_packs()
            if not p.error and (p.source == "store" or (p.current and p.available))
        ]
    rows, problems = [], []
    for name, version in targets:
        pack = registry.find_pack(name, version)
        for c in registry.verify_files(name, pack.version):
            rows.append([c.pack, c.version, c.path, c.status.upper() if c.problem else c.status, c.detail])
        problems += registry.verify(name, pack.version)
        if not args.files_only:
            runtime = registry.check_runtime(name, pack.version)
            for role, rec in runtime.items():
                status = rec["status"]
                rows.append(
                    [
                        pack.name,
                        pack.version,
                        f"(run {role})",
                        status.upper() if status in runtime_check.FATAL else status,
                        f"oneDNN {'on' if rec.get('onednn') else 'off'}"
                        + (f": {rec['detail']}" if rec.get("detail") else ""),
                    ]
                )
                ort = rec.get("onnxruntime")
                if ort:
                    rows.append(
                        [
                            pack.name,
                            pack.version,
                            f"(run {role}, onnxruntime)",
                            ort["status"].upper() if ort["status"] in runtime_check.FATAL else ort["status"],
                            ort.get("detail", ""),
                        ]
                    )
            refused = runtime_check.refusal(pack._m, runtime, f"{pack.name} {pack.version}")
            if refused:
                problems.append(refused)
    _out(_table(rows, ["PACK", "VERSION", "FILE", "STATUS", "DETAIL"]))
    _out()
    if problems:
        _out(f"{len(problems)} problem(s):")
        for p in problems:
            _out(f"  {p}")
        return EXIT_PROBLEMS
    files = sum(1 for row in rows if not row[2].startswith("(run "))
    _out(
        f"ok: {files} file(s) in {len(targets)} pack(s) verified"
        + (f", {len(rows) - files} model run(s)" if len(rows) > files else "")
    )
    if getattr(args, "onednn", False):
        return _verify_onednn(targets)
    return 0


def _verify_onednn(targets: list[tuple[str, str | None]]) -> int:
    """oneDNN pass lists verified on each pack model that leaves ``onednn`` unset (each check in a subprocess)."""
    from shitu.plugins import registry
    from shitu.serving.engine import onednn

    failed = 0
    for name, version in targets:
        pack = registry.find_pack(name, version)
        for role, spec in (("detector", pack.detector_spec()), ("recognizer", pack.extractor_spec())):
            if spec.onednn is not None:
                _out(f"{name} {role}: oneDNN {'on' if spec.onednn else 'off'} as the pack says")
                continue
            record = onednn.verify(spec)
            failed += not record["ok"]
            _out(f"{name} {role}: {onednn.describe(record)}")
    return EXIT_PROBLEMS if failed else 0


@guard
def cmd_use(args: argparse.Namespace) -> int:
    from shitu.plugins import registry

    pack = registry.use(args.name, args.version, default=not args.keep_default)
    _out(
        f"using {pack.name} {pack.version} ({pack.source})" + ("" if args.keep_default else "; it is the default pack")
    )
    if not pack.is_available():
        _out()
        _out(pack.fetch_instructions())
    return 0


@guard
def cmd_rollback(args: argparse.Namespace) -> int:
    from shitu.plugins import registry

    version = registry.rollback(args.name)
    _out(f"{args.name} is back at {version}")
    return 0


@guard
def cmd_quantize(args: argparse.Namespace) -> int:
    from pathlib import Path

    from shitu.serving.quantize.compare import BOUNDS
    from shitu.serving.quantize.pack import quantize_pack

    report = quantize_pack(
        args.name,
        Path(args.images) if args.images else None,
        models=args.models.split(","),
        make_current=not args.no_use,
        install=not args.dry_run,
    )
    if args.json:
        _out(json.dumps(report.to_dict(), indent=2))
    else:
        a = report.agreement
        _out(
            f"{report.pack} {report.base_version}: int8 {', '.join(report.models)} "
            f"({report.calibration_images} calibration images, {a.images} held out)"
        )
        for role, why in report.skipped.items():
            _out(f"  {role} kept in fp32: {why}")
        rows = [
            [
                "features: cosine median / min",
                f"{a.feature_cos_median:.4f} / {a.feature_cos_min:.4f}",
                f">= {BOUNDS['feature_cos_median']}",
            ],
            ["labels: same nearest reference", f"{a.label_agreement:.4f}", f">= {BOUNDS['label_agreement']}"],
            ["boxes: matched at IoU >= 0.9", f"{a.boxes_matched:.4f}", f">= {BOUNDS['boxes_matched']}"],
            ["boxes: median IoU / same count", f"{a.box_iou_median:.4f} / {a.box_count_agreement:.4f}", ""],
            ["ms per image fp32 / int8", f"{a.ms_fp32:.1f} / {a.ms_int8:.1f} ({a.speedup:.2f}x)", ""],
        ]
        _out(_table(["", "int8 vs fp32", "bound"], rows))
    if report.refused:
        print(f"error: not installed, below the bounds: {'; '.join(report.refused)}", file=sys.stderr)
        return EXIT_PROBLEMS
    if report.version:
        _out(
            f"installed {report.pack} {report.version}"
            + ("" if args.no_use else " (current)")
            + f"; back to fp32: shitu plugins use {report.pack} {report.base_version}"
        )
    return 0


# -- wiring --------------------------------------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``plugins`` (list | info | install | remove | verify | use | quantize | rollback) to a ``shitu`` parser."""
    p = subparsers.add_parser(
        "plugins",
        help="scenario packs: list, install, verify, switch",
        description="Scenario packs: a detector, a recogniser, their parameters and "
        "galleries. Store: $SHITU_HOME/packs (default ~/.shitu).",
    )
    _build(p)


def _build(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="plugins_command", metavar="COMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    s = sub.add_parser("list", help="list discovered packs")
    s.add_argument("--all", action="store_true", help="every discovered version, not just the current ones")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("info", help="show one pack: models, galleries, parameters")
    s.add_argument("name", nargs="?", help="pack name (default: the default pack)")
    s.add_argument("--version", help="a specific version")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser(
        "install",
        help="install a pack from a folder, archive, URL or built-in name",
        description="Install a pack into the store and make it current. SOURCE: a pack folder, "
        "a .tar/.tar.gz/.zip archive, an http(s) URL of one, or the name of a built-in "
        "pack (its model files are downloaded, or taken from --from files).",
    )
    s.add_argument(
        "source",
        help="a pack folder, a pack.yaml, a .tar.gz/.zip archive, an http(s) URL of one, "
        "or the name of a built-in / entry-point pack",
    )
    s.add_argument("--name", help="the pack name SOURCE must hold")
    s.add_argument(
        "--from",
        dest="from_files",
        action="append",
        metavar="FILE",
        help="a model archive/file downloaded elsewhere (repeatable); matched by file name",
    )
    s.add_argument(
        "--sha256",
        action="append",
        metavar="HEX",
        help="expected sha256 of a file whose manifest publishes none (repeatable)",
    )
    s.add_argument(
        "--trust", action="store_true", help="accept files without a published sha256 (their hashes are recorded)"
    )
    s.add_argument("--use", action="store_true", help="also make it the default pack")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.add_argument(
        "--no-galleries",
        action="store_true",
        help="do not build the galleries the pack brings now (they are built on first use)",
    )
    s.set_defaults(func=cmd_install)

    s = sub.add_parser("remove", help="remove a version (or --all) from the store")
    s.add_argument("name", help="pack name")
    s.add_argument("version", nargs="?", help="the version to remove (or --all)")
    s.add_argument("--all", action="store_true", help="remove every version")
    s.set_defaults(func=cmd_remove)

    s = sub.add_parser(
        "verify",
        help="check every file against its sha256 and run each model once (in a "
        "child process, with the pack's runtime settings)",
    )
    s.add_argument("name", nargs="?", help="pack name (default: every installed or ready pack)")
    s.add_argument("--version", help="a specific version")
    s.add_argument(
        "--onednn",
        action="store_true",
        help="also verify a oneDNN pass list on models that leave it unset (official models), each in a "
        "subprocess, and record it so they run with oneDNN",
    )
    s.add_argument("--files-only", action="store_true", help="only check the files (no test forward)")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("use", help="make a pack (version) current and the default pack")
    s.add_argument("name", help="pack name")
    s.add_argument("version", nargs="?", help="an installed version (default: the current one)")
    s.add_argument("--keep-default", action="store_true", help="switch the version only, keep the default pack")
    s.set_defaults(func=cmd_use)

    s = sub.add_parser(
        "quantize",
        help="make an int8 version of a pack (calibrated, compared with fp32, installed)",
        description="Quantize a pack's detector and recogniser to int8 (onnxruntime, static, per-channel), "
        "calibrated on the pack's gallery images or --images, compared with fp32 on held-out images (every "
        "third), and installed as a new version <release>+int8.<n> if it meets the bounds.",
    )
    s.add_argument("name", help="pack name (its current, published version is quantized)")
    s.add_argument("--images", metavar="DIR", help="calibration images (default: the pack's gallery images)")
    s.add_argument("--models", default="detector,recognizer", help="roles to quantize (default: both)")
    s.add_argument("--no-use", action="store_true", help="install it but keep the current version current")
    s.add_argument("--dry-run", action="store_true", help="measure only: install nothing")
    s.add_argument("--json", action="store_true", help="machine-readable report")
    s.set_defaults(func=cmd_quantize)

    s = sub.add_parser("rollback", help="go back to the previous current version")
    s.add_argument("name", help="pack name")
    s.set_defaults(func=cmd_rollback)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shitu plugins", description="Scenario packs.")
    _build(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
