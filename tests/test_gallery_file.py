"""Gallery list files (PaddleClas format and variants) and folder trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from shitu.serving.gallery.list_file import (
    GalleryFileError,
    ListEntry,
    label_problem,
    parse_list_file,
    read_entries,
    scan_folder,
)


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    for rel in ["gallery/0/0.jpg", "gallery/0/1.jpg", "gallery/1/0.jpg", "my photos/a b.jpg", "c.png"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"not really an image; the parser only checks existence")
    return tmp_path


def write(root: Path, text: str, name: str = "list.txt") -> Path:
    p = root / name
    p.write_text(text, encoding="utf-8")
    return p


def test_paddleclas_tab_format(root):
    lst = write(root, "gallery/0/0.jpg\t0\ngallery/0/1.jpg\t0\ngallery/1/0.jpg\t1\n")
    entries = parse_list_file(lst)
    assert [(e.path, e.label, e.line_no) for e in entries] == [
        (root / "gallery/0/0.jpg", "0", 1),
        (root / "gallery/0/1.jpg", "0", 2),
        (root / "gallery/1/0.jpg", "1", 3),
    ]
    assert all(isinstance(e, ListEntry) and e.source == str(lst) for e in entries)
    assert entries[0].key == "gallery/0/0.jpg" and entries[0].record_source == "gallery/0/0.jpg"


def test_label_after_the_first_tab_keeps_spaces_and_path_may_have_spaces(root):
    lst = write(root, 'my photos/a b.jpg\tCoca Cola Zero \ngallery/0/0.jpg\t"Quoted  label"\n')
    entries = parse_list_file(lst)
    assert [(e.path.name, e.label) for e in entries] == [("a b.jpg", "Coca Cola Zero"), ("0.jpg", "Quoted  label")]


def test_whitespace_separated_rest_of_line_is_the_label(root):
    lst = write(root, "gallery/0/0.jpg   cat\ngallery/0/1.jpg Coca Cola\n  c.png\t  dog  \n")
    assert [(e.path.name, e.label) for e in parse_list_file(lst)] == [
        ("0.jpg", "cat"),
        ("1.jpg", "Coca Cola"),
        ("c.png", "dog"),
    ]


def test_quoted_path_and_label_without_tab(root):
    lst = write(root, "\"my photos/a b.jpg\" \"Coca Cola\"\n'gallery/1/0.jpg' 'x y'\n")
    assert [(e.path, e.label) for e in parse_list_file(lst)] == [
        (root / "my photos/a b.jpg", "Coca Cola"),
        (root / "gallery/1/0.jpg", "x y"),
    ]


def test_blank_lines_and_comments_are_skipped_line_numbers_kept(root):
    lst = write(root, "# header comment\n\n   \n  # indented comment\ngallery/0/0.jpg\ta\r\n\ngallery/1/0.jpg\tb\n")
    entries = parse_list_file(lst)
    assert [(e.label, e.line_no) for e in entries] == [("a", 5), ("b", 7)]


def test_utf8_bom_and_non_ascii_labels(root):
    (root / "list.txt").write_bytes("\ufeffgallery/0/0.jpg\t可口可乐\n".encode("utf-8"))
    assert parse_list_file(root / "list.txt")[0].label == "可口可乐"


def test_missing_label_reports_file_and_line(root):
    lst = write(root, "gallery/0/0.jpg\ta\n# c\ngallery/0/1.jpg\n")
    with pytest.raises(GalleryFileError) as ei:
        parse_list_file(lst)
    err = ei.value
    assert isinstance(err, ValueError)
    assert (err.file, err.line_no) == (str(lst), 3)
    assert str(lst) in str(err) and ":3:" in str(err) and "missing label" in str(err)
    lst2 = write(root, "gallery/0/0.jpg\t   \n", "tab_only.txt")
    with pytest.raises(GalleryFileError, match=r"tab_only\.txt:1: missing label"):
        parse_list_file(lst2)


def test_missing_image_reports_file_and_line(root):
    lst = write(root, "gallery/0/0.jpg\ta\ngallery/9/9.jpg\tb\n")
    with pytest.raises(GalleryFileError) as ei:
        parse_list_file(lst)
    assert ei.value.line_no == 2 and "image not found" in str(ei.value) and "9.jpg" in str(ei.value)
    # Not checked when asked not to.
    assert len(parse_list_file(lst, check_images=False)) == 2


def test_invalid_label_reports_line(root):
    lst = write(root, "gallery/0/0.jpg\ta\x01b\ngallery/0/1.jpg\t" + "x" * 129 + "\n")
    errors: list[GalleryFileError] = []
    assert parse_list_file(lst, errors=errors) == []
    assert [e.line_no for e in errors] == [1, 2]
    assert "control character" in errors[0].message and "129 characters" in errors[1].message
    assert parse_list_file(lst, errors=[], max_label_length=200)[0].label == "x" * 129


def test_unclosed_quote_is_a_bad_line(root):
    lst = write(root, '"gallery/0/0.jpg cat\n')
    with pytest.raises(GalleryFileError, match=":1: unclosed quote"):
        parse_list_file(lst)


def test_collect_errors_instead_of_raising(root):
    lst = write(root, "gallery/0/0.jpg\ta\nnolabel.jpg\ngallery/0/9.jpg\tb\ngallery/1/0.jpg\tc\n")
    errors: list[GalleryFileError] = []
    entries = parse_list_file(lst, errors=errors)
    assert [e.label for e in entries] == ["a", "c"]
    assert [(e.line_no, "label" in e.message or "not found" in e.message) for e in errors] == [(2, True), (3, True)]


def test_image_root_and_absolute_paths(root, tmp_path):
    other = tmp_path / "lists"
    other.mkdir()
    lst = write(other, f"gallery/0/0.jpg\ta\n{root / 'c.png'}\tb\n")
    entries = parse_list_file(lst, image_root=root)
    assert [e.path for e in entries] == [root / "gallery/0/0.jpg", root / "c.png"]
    with pytest.raises(GalleryFileError):  # relative to the list file's folder by default
        parse_list_file(lst)


def test_custom_delimiter(root):
    lst = write(root, "gallery/0/0.jpg|a b\ngallery/0/1.jpg c\n")
    assert [e.label for e in parse_list_file(lst, delimiter="|")] == ["a b", "c"]


def test_missing_list_file():
    with pytest.raises(GalleryFileError, match="list file not found"):
        parse_list_file("/nonexistent/list.txt")


def test_scan_folder_tree(tmp_path):
    for rel in [
        "cat/1.jpg",
        "cat/sub/2.PNG",
        "dog/a.jpeg",
        "dog/notes.txt",
        "top.jpg",
        ".hidden/x.jpg",
        "dog/.x.jpg",
        "Coca Cola/c.bmp",
    ]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    entries = scan_folder(tmp_path)
    assert [(e.label, e.key, e.line_no) for e in entries] == [
        ("Coca Cola", "Coca Cola/c.bmp", None),
        ("cat", "cat/1.jpg", None),
        ("cat", "cat/sub/2.PNG", None),
        ("dog", "dog/a.jpeg", None),
    ]
    assert entries[0].source == str(tmp_path / "Coca Cola/c.bmp")
    assert read_entries(tmp_path) == entries


def test_label_problem():
    assert label_problem("ok label") is None
    assert label_problem("") and label_problem("   ") and label_problem(None)
    assert "control" in label_problem("a\nb") and "control" in label_problem("a\x7fb")
    assert label_problem("x" * 128) is None and "129" in label_problem("x" * 129)
    assert label_problem("x" * 10, max_length=5)
