"""The docs' transcripts, regenerated from a run: ``python tools/transcripts.py --write`` (or ``make transcripts``).

Every transcript in ``README.md`` and ``docs/*.md`` sits between ``<!-- run:NAME -->`` and ``<!-- /run:NAME -->``.
:data:`BLOCKS` says, per name, how it is made; the page itself holds what is run:

- ``console``: the block's ``$ `` lines (with their ``\\``-continued lines) are the commands. They run, in order, in
  one ``bash`` in a folder holding the demo photographs (``shitu demo --photos .``, and ``broken.jpg``, bytes that
  are no image), with the real ``shitu`` CLI, ``curl`` and ``python``; the block is rewritten with each command
  followed by what it printed (stdout and stderr).
- ``python``: the block's first ```` ```python ```` fence is the code; it runs as it is, and the fence after it
  becomes what it printed.
- ``output``: :attr:`Block.command` runs and the block is its stdout (the README's ``make demo`` table).
- ``serve-log``: what the shared ``shitu serve --port 8866 --token s3cret`` printed up to that point.

A block's :attr:`Block.setup` makes input files the pages describe but do not make with a command (the video clip,
the overlap collage); its :attr:`Block.figures` are pictures its commands draw, copied into ``docs/`` by ``--write``
(``docs/explain_overlap.jpg``). :data:`FIGURES` are pictures made apart from any block (the web page in a real
browser: ``docs/webpage.png``), written by ``--write`` and never compared.

The ``--server`` blocks share one real ``shitu serve`` (the four modules under the real ``hub serving``) started on
a free loopback port with a temporary ``SHITU_HOME`` / ``HUB_HOME``; the commands and code say port 8866, rewritten
to the real port before running and back in what they print. What differs between two runs is replaced by a fixed
placeholder (:func:`Session.normalise`: the temporary folder, ports, pids, request ids, times), so a second run
writes the same text on the same machine. ``--check`` regenerates and prints a diff where a page differs (exit 1);
``tests/test_docs_transcripts.py`` does the same for the :attr:`Block.fast` blocks.
"""

from __future__ import annotations

import argparse
import difflib
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parents[1]
#: The port, admin token and temporary folder as the pages show them.
DOC_PORT = 8866
TOKEN = "s3cret"
SHOWN_TMP = "/tmp/shitu-docs"
SERVE = "shitu serve --port {port} --token " + TOKEN
#: One transcript block: ``<!-- run:NAME -->`` ... ``<!-- /run:NAME -->``.
BLOCK = re.compile(r"(?P<open><!-- run:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(?P<close><!-- /run:(?P=name) -->)", re.S)
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\n(?P<text>.*?)^```\n", re.S | re.M)


@dataclass(frozen=True)
class Block:
    kind: Literal["console", "python", "output", "serve-log"]
    #: Needs the shared server.
    server: bool = False
    #: Re-run by tests/test_docs_transcripts.py (quick, and the same on any machine but for float digits).
    fast: bool = True
    #: ``output`` blocks: the command whose stdout the block shows.
    command: str = ""
    #: A :class:`Session` method that makes the block's input files first (once per session).
    setup: str = ""
    #: (file the commands write, relative to the run's folder; the docs figure it becomes): copied by ``--write``.
    figures: tuple[tuple[str, str], ...] = ()


#: Every transcript, in the order they run (the server's galleries fill up in this order).
BLOCKS: dict[str, Block] = {
    "first-recognize": Block("console"),
    # starts a hub server of its own (about 17 s on 2 cores)
    "demo": Block("output", command="shitu demo --out demo_output", fast=False),
    "curl-health": Block("console", server=True),
    # the thread count follows the machine's cores, the log lines the code's line numbers
    "serve-log": Block("serve-log", server=True, fast=False),
    "sdk-example": Block("python", server=True),
    "sdk-errors": Block("python", server=True),
    "cli-recognize": Block("console", server=True),
    "cli-detect": Block("console", server=True),
    "cli-gallery-server": Block("console", server=True),
    "http-api": Block("console", server=True),
    "paddlex": Block("console", server=True),
    "explain-overlap": Block("console", setup="overlap", figures=(("why/overlap.jpg", "docs/explain_overlap.jpg"),)),
    "video-sample": Block("console", setup="video_clip"),
    "video-json": Block("console", setup="video_clip"),
}


#: Pictures of the docs drawn by a run: docs file -> the :class:`Session` method returning its bytes (``--write`` only:
#: a browser's rendering is not compared).
FIGURES: dict[str, str] = {"docs/webpage.png": "webpage_screenshot"}
#: The gallery the web page's picture shows (added through the server, so its items have thumbnails).
WEBPAGE_GALLERY = "catalogue"


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks_in(text: str) -> dict[str, str]:
    """name -> body of each transcript block of a page."""
    return {m["name"]: m["body"] for m in BLOCK.finditer(text)}


def with_bodies(text: str, bodies: dict[str, str]) -> str:
    """``text`` with the body of each block named in ``bodies`` replaced."""
    return BLOCK.sub(lambda m: m["open"] + bodies.get(m["name"], m["body"]) + m["close"], text)


def comparable(text: str) -> str:
    """``text`` with every number of more than 2 decimals rounded to 2 (scores differ in their last digits between
    CPUs); what the test and ``--check`` compare."""
    return re.sub(r"-?\d+\.\d{3,}", lambda m: f"{float(m[0]):.2f}", text)


# -- parsing a console block ---------------------------------------------------------------------------------------


@dataclass
class Command:
    text: str  # as shown, continuation lines included
    blank_before: bool


def console_commands(body: str) -> list[Command]:
    """The ``$ `` commands of a console fence (the output lines between them are what is regenerated)."""
    fence = FENCE.search(body)
    if not fence:
        raise ValueError("a console block must hold a fenced code block")
    commands: list[Command] = []
    blank, continued = False, False
    for line in fence["text"].splitlines():
        if continued:
            commands[-1].text += "\n" + line
        elif line.startswith("$ "):
            commands.append(Command(line[2:], blank and bool(commands)))
        blank = line.strip() == ""
        continued = bool(commands) and (line.startswith("$ ") or continued) and line.endswith("\\")
    if not commands:
        raise ValueError("a console block without a `$ ` command")
    return commands


# -- the run ---------------------------------------------------------------------------------------------------


class Session:
    """A temporary SHITU_HOME / HUB_HOME, a folder of demo photographs, and (on first use) a real ``shitu serve``."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="shitu-docs-"))
        self.work = self.tmp / "work"
        bin_dir = str(Path(sys.executable).parent)
        self.env = {k: v for k, v in os.environ.items() if k not in ("SHITU_ADMIN_TOKEN", "SHITU_HOST")}
        self.env.update(
            SHITU_HOME=str(self.tmp / "shitu"),
            HUB_HOME=str(self.tmp / "hub"),
            PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""),
            PYTHONUNBUFFERED="1",
            NO_COLOR="1",
            TERM="dumb",
            COLUMNS="120",
            GLOG_minloglevel="2",
        )
        self.port: int | None = None
        self.server: subprocess.Popen[bytes] | None = None
        self.server_log = self.tmp / "serve.log"
        self._prepared: set[str] = set()
        #: docs figure -> the file a block's commands wrote (copied by ``--write`` before the session ends)
        self.figures: dict[Path, Path] = {}

    def __enter__(self) -> Session:
        self.work.mkdir(parents=True)
        self._run(["shitu", "demo", "--photos", "."], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        (self.work / "broken.jpg").write_bytes(b"not an image")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGINT)
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait(30)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _run(self, argv: list[str], **kw) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, cwd=self.work, env=self.env, text=True, check=True, timeout=600, **kw)

    def start_server(self, timeout: float = 300.0) -> int:
        """``shitu serve`` on a free port, its output in :attr:`server_log`; ready once it logged "serving on"."""
        if self.port is not None:
            return self.port
        from shitu.serving.hub.control import free_port

        port = free_port()
        folder = self.tmp / "serve"
        folder.mkdir()
        with open(self.server_log, "wb") as log:
            self.server = subprocess.Popen(
                SERVE.format(port=port).split(),
                cwd=folder,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while "serving on " not in self.server_log.read_text(errors="replace"):
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"shitu serve did not start:\n{self.server_log.read_text()[-3000:]}")
            time.sleep(0.2)
        while True:  # listening (werkzeug logs the line just before it accepts)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.port = port
        return port

    def prepare(self, setup: str) -> None:
        if setup not in self._prepared:
            getattr(self, setup)()
            self._prepared.add(setup)

    def overlap(self) -> None:
        """docs/parameters.md's ``overlap.png``: the cat with the coffee cup pasted over its side."""
        import cv2

        from shitu.serving.cli.demo import gallery_photos, overlapping_collage

        cv2.imwrite(str(self.work / "overlap.png"), overlapping_collage(gallery_photos()))

    def video_clip(self) -> None:
        """docs/video.md's clip (``tests/test_video.py``'s ``write_video``) and the two photos its crops come from."""
        sys.path.insert(0, str(ROOT))
        try:
            import cv2
            from skimage import data

            from tests.test_video import CAT_PHOTO, _bgr, write_video
        finally:
            sys.path.remove(str(ROOT))
        write_video(self.work / "cat_and_astronaut.avi")
        cv2.imwrite(str(self.work / "cat_face.jpg"), CAT_PHOTO)
        cv2.imwrite(str(self.work / "astronaut_face.jpg"), _bgr(data.astronaut())[30:230, 140:340])

    def webpage_screenshot(self) -> bytes:
        """The web page in the Debian ``chromium`` (Playwright): a gallery of the six demo photos added through the
        SDK, and the demo collage recognised."""
        from playwright.sync_api import sync_playwright

        from shitu.serving.client import ShituClient

        port = self.start_server()
        labels = ["astronaut", "cat", "coffee", "flower", "rocket", "temple"]
        with ShituClient(f"http://127.0.0.1:{port}", token=TOKEN) as client:
            client.gallery_add([str(self.work / f"{k}.jpg") for k in labels], labels, gallery=WEBPAGE_GALLERY)
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            raise RuntimeError("the web page's picture needs the Debian package chromium")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
            try:
                page = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
                page.goto(f"http://127.0.0.1:{port}/web/", timeout=120_000)
                page.wait_for_selector("body[data-ready=yes]", timeout=120_000)
                page.select_option("#gallery", WEBPAGE_GALLERY)
                page.wait_for_function(
                    f"() => document.querySelector('#gallery-info').dataset.count === '{len(labels)}'", timeout=120_000
                )
                page.set_input_files("#file", str(self.work / "collage_cat_and_coffee.jpg"))
                page.wait_for_selector("body[data-recognition=done]", timeout=120_000)
                page.wait_for_function(
                    "() => [...document.querySelectorAll('.label-card img')].every(i => i.complete)", timeout=120_000
                )
                page.evaluate("() => document.activeElement && document.activeElement.blur()")  # no focus ring
                page.mouse.move(0, 0)
                shot = page.screenshot(caret="hide", animations="disabled")
            finally:
                browser.close()
        from PIL import Image  # a 256-colour palette: a third of the bytes, the same picture to the eye

        png = io.BytesIO()
        Image.open(io.BytesIO(shot)).convert("RGB").quantize(256).save(png, "PNG", optimize=True)
        return png.getvalue()

    # what is shown

    def to_real(self, text: str) -> str:
        """A command or code as the page shows it -> as it runs (the real port)."""
        if self.port is None:
            return text
        return re.sub(rf"\b(127\.0\.0\.1|localhost):{DOC_PORT}\b", rf"\g<1>:{self.port}", text)

    def normalise(self, text: str) -> str:
        """What a run printed -> what the page shows: fixed placeholders for what differs between runs."""
        for tmp in {str(self.tmp), os.path.realpath(self.tmp)}:
            text = text.replace(tmp, SHOWN_TMP)
        if self.port is not None:
            text = re.sub(rf"\b(127\.0\.0\.1|localhost):{self.port}\b", rf"\g<1>:{DOC_PORT}", text)
        subs = [
            (r'("request_id": ?)"[0-9a-f]{32}"', r'\1"<request-id>"'),
            (r'("pid": ?)\d+', r"\1<pid>"),
            (r'("logId": ?)"[0-9a-f-]{32,36}"', r'\1"<log-id>"'),
            (r"\bpaddlex-[0-9a-f]{20}\b", "paddlex-<index-key>"),
            (r"""(["']\w+_at["']: ?)\d{9,10}(\.\d+)?\b""", r"\1<epoch>"),
            (r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00", "<iso-time>"),
            (r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]", "[<time>]"),
            (r"\[\d\d/\w{3}/\d{4} \d\d:\d\d:\d\d\]", "[<time>]"),
            (r"(track\(s\)), \d+\.\ds\b", r"\1, <elapsed>"),
            (r'("elapsed": ?)\d+\.\d+', r"\1<elapsed>"),
        ]
        for pattern, repl in subs:
            text = re.sub(pattern, repl, text)
        # embeddings: the first three numbers of a long list
        return re.sub(
            r"\[(-?[\d.e-]+),(-?[\d.e-]+),(-?[\d.e-]+)(?:,-?[\d.e-]+){13,}\]",
            lambda m: f"[{m[1]},{m[2]},{m[3]},... ({m[0].count(',') + 1} numbers)]",
            text,
        )

    def console(self, commands: list[Command]) -> str:
        """Run ``commands`` in one bash (variables and files carry over); the fence's text."""
        script = ["exec 2>&1", "__rc=0"]
        for i, command in enumerate(commands):
            script += [f"printf '\\n@@transcript {i}@@\\n'", "(exit $__rc)", self.to_real(command.text), "__rc=$?"]
        done = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=self.work,
            env=self.env,
            stdout=subprocess.PIPE,
            text=True,
            timeout=600,
        )
        outputs = re.split(r"\n@@transcript \d+@@\n", done.stdout)[1:]
        if len(outputs) != len(commands):
            raise RuntimeError(f"the transcript's commands did not all run:\n{done.stdout[-3000:]}")
        lines: list[str] = []
        for command, output in zip(commands, outputs):
            lines += [""] if command.blank_before else []
            lines += ["$ " + command.text]
            output = self.normalise(output.rstrip("\n"))
            lines += [output] if output else []
        return "\n".join(lines) + "\n"

    def python(self, code: str) -> str:
        path = self.work / "example.py"
        path.write_text(self.to_real(code), encoding="utf-8")
        done = subprocess.run(
            [sys.executable, path.name],
            cwd=self.work,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=600,
        )
        path.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"the example failed:\n{code}\n{done.stdout}")
        return self.normalise(done.stdout.rstrip("\n")) + "\n"


def generate(name: str, body: str, session: Session) -> str:
    """The new body of block ``name`` (its current ``body`` holds the commands or code), between blank lines (so
    that Markdown reads the fences apart from the markers)."""
    return "\n" + _fences(name, body, session) + "\n"


def _fences(name: str, body: str, session: Session) -> str:
    block = BLOCKS[name]
    if block.setup:
        session.prepare(block.setup)
    if block.server:
        session.start_server()
    if block.kind == "console":
        fences = session.console(console_commands(body))
        for made, figure in block.figures:
            session.figures[ROOT / figure] = session.work / made
        return "```console\n" + fences + "```\n"
    if block.kind == "python":
        fences = list(FENCE.finditer(body))
        if not fences or fences[0]["lang"] != "python":
            raise ValueError(f"block {name}: the first fence must be the ```python code")
        code = fences[0]["text"]
        return "```python\n" + code + "```\n\n```\n" + session.python(code) + "```\n"
    if block.kind == "output":
        done = session._run(["bash", "-c", block.command], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        return "```\n" + session.normalise(done.stdout.rstrip("\n")) + "\n```\n"
    log = session.normalise(session.server_log.read_text(errors="replace").rstrip("\n"))
    return "```console\n$ " + SERVE.format(port=DOC_PORT) + "\n" + log + "\n```\n"


def current_blocks(names: list[str] | None = None) -> dict[str, str]:
    """name -> the body the pages hold now (the first page's, where a block appears on several)."""
    found: dict[str, str] = {}
    for page in pages():
        for name, body in blocks_in(page.read_text(encoding="utf-8")).items():
            if name not in BLOCKS:
                raise ValueError(f"{page.relative_to(ROOT)}: unknown transcript block {name!r} (see BLOCKS)")
            found.setdefault(name, body)
    return {n: found[n] for n in BLOCKS if n in found and (names is None or n in names)}


def regenerate(session: Session, names: list[str] | None = None) -> dict[str, str]:
    """name -> the regenerated body, for every block the pages hold (or those named), in :data:`BLOCKS`' order."""
    return {name: generate(name, body, session) for name, body in current_blocks(names).items()}


def diff(name: str, shown: str, regenerated: str) -> str:
    """A readable diff of one block (empty when they agree once floats are rounded to 2 decimals)."""
    if comparable(shown) == comparable(regenerated):
        return ""
    return "".join(
        difflib.unified_diff(
            shown.splitlines(True), regenerated.splitlines(True), f"{name} (in the docs)", f"{name} (a run now)"
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite the blocks in README.md and docs/*.md")
    mode.add_argument("--check", action="store_true", help="print a diff where a block differs from a run; exit 1")
    mode.add_argument("--list", action="store_true", help="list the blocks and the pages holding them")
    parser.add_argument("names", nargs="*", help="only these blocks")
    args = parser.parse_args(argv)
    if args.list:
        for page in pages():
            for name in blocks_in(page.read_text(encoding="utf-8")):
                print(f"{name:22} {page.relative_to(ROOT)}")
        return 0
    started = time.monotonic()
    with Session() as session:
        bodies = regenerate(session, args.names or None)
        if args.write:
            for figure, made in session.figures.items():
                if not figure.is_file() or figure.read_bytes() != made.read_bytes():
                    shutil.copyfile(made, figure)
                    print(f"wrote {figure.relative_to(ROOT)}")
            for figure, method in FIGURES.items():
                if not args.names or Path(figure).stem in args.names:
                    png = getattr(session, method)()
                    if not (ROOT / figure).is_file() or (ROOT / figure).read_bytes() != png:
                        (ROOT / figure).write_bytes(png)
                        print(f"wrote {figure}")
    shown = current_blocks(list(bodies))
    if args.check:
        diffs = [d for name in bodies if (d := diff(name, shown[name], bodies[name]))]
        print("".join(diffs) or f"{len(bodies)} transcripts match a run", end="\n" if not diffs else "")
        return 1 if diffs else 0
    for page in pages():
        text = page.read_text(encoding="utf-8")
        new = with_bodies(text, bodies)
        if new != text:
            page.write_text(new, encoding="utf-8")
            print(f"wrote {page.relative_to(ROOT)}")
    print(f"{len(bodies)} transcripts regenerated in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
