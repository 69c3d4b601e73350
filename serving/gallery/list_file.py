"""Gallery list files and folder trees: which image goes with which label.

Two sources are understood:

- A **list file**, one image per line. PaddleClas's format is ``path<TAB>label`` with the path relative to an
  image root (by default the list file's own folder). Also accepted:

  * whitespace instead of the tab (``path label``); the label is then the rest of the line, so
    ``a.jpg Coca Cola`` is labelled ``Coca Cola``;
  * quoted fields (``"my photos/a.jpg" "Coca Cola"``), for paths with spaces when there is no tab;
  * with a tab, the label is everything after the first tab (surrounding spaces and quotes removed);
  * blank lines and ``#`` comment lines (a ``#`` at the start of the line, after optional spaces).

- A **folder tree** ``root/<label>/<image>``; images deeper down (``root/<label>/a/b.jpg``) belong to the
  top-level folder's label. Hidden files and folders are skipped.

A bad line (no label, an invalid label, a missing image) raises :class:`GalleryFileError` naming the file and
the line, or, when an ``errors`` list is passed, is appended to it and skipped.

Labels follow the gallery rule (:mod:`.validation`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from shitu.errors import InvalidArgument
from shitu.serving.gallery.validation import DEFAULT_MAX_LABEL_LENGTH, label_problem

__all__ = [
    "IMAGE_EXTENSIONS",
    "ListEntry",
    "GalleryFileError",
    "label_problem",
    "parse_list_file",
    "read_entries",
    "scan_folder",
]

#: File name endings treated as images when scanning a folder (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jpe", ".ppm", ".pgm", ".pbm")


class GalleryFileError(InvalidArgument):
    """A bad line of a gallery list file (or a bad entry of a folder tree)."""

    def __init__(self, file: str | os.PathLike, line_no: int | None, message: str):
        self.file = str(file)
        self.line_no = line_no
        self.message = message
        where = f"{self.file}:{line_no}" if line_no is not None else self.file
        super().__init__(f"{where}: {message}")


@dataclass
class ListEntry:
    """One image of a gallery source: a line of a list file, or an image of a ``label/image`` folder tree.

    (``shitu.plugins.manifest.GalleryEntry`` is something else: a gallery a pack's manifest declares.)

    ``path`` is the image file; ``label`` its label; ``line_no`` the 1-based line of the list file (``None`` for
    folder scans); ``source`` where the entry came from, for messages (the list file, or the image itself for
    folder scans). ``key`` is the image as the list names it (relative to the image root, ``/``-separated):
    what the gallery records as the item's source.
    """

    path: Path
    label: str
    line_no: int | None
    source: str
    key: str | None = None

    @property
    def record_source(self) -> str:
        return self.key if self.key is not None else str(self.path)


#: The former name of :class:`ListEntry` (kept for callers written before the rename).
GalleryEntry = ListEntry


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def _split_whitespace(line: str) -> tuple[str, str | None]:
    """``path rest-of-line`` with an optionally quoted path; the label may be quoted too."""
    line = line.strip()
    if line[0] in "\"'":
        end = line.find(line[0], 1)
        if end < 0:
            raise ValueError(f"unclosed quote {line[0]} in the image path")
        path, rest = line[1:end], line[end + 1 :]
        if rest and not rest[0].isspace():
            raise ValueError("expected a space after the quoted image path")
    else:
        parts = line.split(None, 1)
        path, rest = parts[0], (parts[1] if len(parts) > 1 else "")
    rest = rest.strip()
    if not rest:
        return path, None
    if rest[0] in "\"'" and (len(rest) < 2 or rest[-1] != rest[0]):
        raise ValueError(f"unclosed quote {rest[0]} in the label")
    return path, _unquote(rest)


def _split_line(line: str, delimiter: str) -> tuple[str, str | None]:
    if delimiter and delimiter in line:
        path, label = line.split(delimiter, 1)
        path = _unquote(path)
        label = _unquote(label)
        return path, (label or None)
    return _split_whitespace(line)


def parse_list_file(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    delimiter: str = "\t",
    errors: list[GalleryFileError] | None = None,
    *,
    check_images: bool = True,
    max_label_length: int = DEFAULT_MAX_LABEL_LENGTH,
    encoding: str = "utf-8-sig",
) -> list[ListEntry]:
    """Read a gallery list file into entries (see the module doc for the accepted formats).

    Image paths are resolved against ``image_root`` (default: the list file's folder); absolute paths are kept.
    With ``check_images`` a missing image is a bad line. With ``errors=None`` the first bad line raises
    :class:`GalleryFileError`; with a list, bad lines are appended to it and skipped.
    """
    list_path = Path(path)
    root = Path(image_root) if image_root is not None else list_path.parent
    try:
        text = list_path.read_text(encoding=encoding)
    except FileNotFoundError:
        raise GalleryFileError(list_path, None, "list file not found") from None
    except UnicodeDecodeError as e:
        raise GalleryFileError(list_path, None, f"not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise GalleryFileError(list_path, None, f"cannot read the list file: {e.strerror or e}") from None

    entries: list[ListEntry] = []

    def bad(line_no: int, message: str) -> None:
        err = GalleryFileError(list_path, line_no, message)
        if errors is None:
            raise err
        errors.append(err)

    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip("\r\n")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            rel, label = _split_line(line, delimiter)
        except ValueError as e:
            bad(line_no, str(e))
            continue
        if not rel:
            bad(line_no, "missing image path")
            continue
        if label is None:
            bad(line_no, f"missing label for image {rel!r}")
            continue
        problem = label_problem(label, max_label_length)
        if problem:
            bad(line_no, f"invalid label {label!r}: {problem}")
            continue
        image = Path(rel)
        if not image.is_absolute():
            image = root / image
        if check_images and not image.is_file():
            bad(line_no, f"image not found: {image}")
            continue
        entries.append(ListEntry(image, label, line_no, str(list_path), rel.replace("\\", "/")))
    return entries


def scan_folder(
    root: str | os.PathLike,
    errors: list[GalleryFileError] | None = None,
    *,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    max_label_length: int = DEFAULT_MAX_LABEL_LENGTH,
) -> list[ListEntry]:
    """Entries of a folder tree ``root/<label>/<image>`` (images deeper down take the top folder's label).

    Sorted by path. Files directly under ``root`` and non-image files are ignored; a label folder whose name is
    not a valid label is a bad entry (raised, or appended to ``errors``).
    """
    root = Path(root)
    if not root.is_dir():
        raise GalleryFileError(root, None, "not a folder")
    entries: list[ListEntry] = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        label = label_dir.name
        problem = label_problem(label, max_label_length)
        if problem:
            err = GalleryFileError(label_dir, None, f"invalid label {label!r}: {problem}")
            if errors is None:
                raise err
            errors.append(err)
            continue
        found: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(label_dir):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                if not name.startswith(".") and name.lower().endswith(extensions):
                    found.append(Path(dirpath) / name)
        for image in sorted(found):
            key = image.relative_to(root).as_posix()
            entries.append(ListEntry(image, label, None, str(image), key))
    return entries


def read_entries(
    source: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    delimiter: str = "\t",
    errors: list[GalleryFileError] | None = None,
    *,
    max_label_length: int = DEFAULT_MAX_LABEL_LENGTH,
) -> list[ListEntry]:
    """A list file or a folder tree, whichever ``source`` is."""
    if Path(source).is_dir():
        return scan_folder(source, errors, max_label_length=max_label_length)
    return parse_list_file(source, image_root, delimiter, errors, max_label_length=max_label_length)
