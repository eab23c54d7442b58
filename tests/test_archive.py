"""Safe archive extraction: nothing is written outside the extraction folder."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from concepts import archive as arc
from concepts.errors import SourceError, UnsafeInputError


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_zip_and_single_top_folder(tmp_path: Path) -> None:
    z = _zip(tmp_path / "a.zip", {"export/annotations.xml": b"<annotations/>", "export/images/x.jpg": b"jpg"})
    out = arc.extract_archive(z, tmp_path / "dest")
    assert out == tmp_path / "dest" / "export" and (out / "images" / "x.jpg").read_bytes() == b"jpg"
    z2 = _zip(tmp_path / "b.zip", {"annotations.xml": b"<annotations/>", "images/x.jpg": b"jpg"})
    assert arc.extract_archive(z2, tmp_path / "dest2") == tmp_path / "dest2"


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "/abs/evil.txt", "C:/evil.txt", "..\\evil.txt"])
def test_zip_escapes_refused(tmp_path: Path, name: str) -> None:
    z = _zip(tmp_path / "e.zip", {"ok.txt": b"ok", name: b"boom"})
    with pytest.raises(UnsafeInputError, match="outside the extraction folder") as e:
        arc.extract_archive(z, tmp_path / "dest")
    assert repr(name) in str(e.value)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "dest" / "ok.txt").exists()


def test_zip_symlink_refused(tmp_path: Path) -> None:
    z = tmp_path / "s.zip"
    with zipfile.ZipFile(z, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeInputError, match="'link' is a symbolic link"):
        arc.extract_archive(z, tmp_path / "dest")


def test_tar_links_and_escapes(tmp_path: Path) -> None:
    def make(name: str, member: tarfile.TarInfo, data: bytes = b"") -> Path:
        path = tmp_path / name
        with tarfile.open(path, "w:gz") as tf:
            tf.addfile(member, io.BytesIO(data) if data else None)
        return path

    link = tarfile.TarInfo("images")
    link.type, link.linkname = tarfile.SYMTYPE, "/tmp"
    with pytest.raises(UnsafeInputError, match="'images' is a link"):
        arc.extract_archive(make("l.tgz", link), tmp_path / "d1")
    up = tarfile.TarInfo("../up.txt")
    up.size = 2
    with pytest.raises(UnsafeInputError, match="outside"):
        arc.extract_archive(make("u.tgz", up, b"hi"), tmp_path / "d2")
    assert not (tmp_path / "up.txt").exists()
    fine = tarfile.TarInfo("a/b.txt")
    fine.size = 2
    assert (arc.extract_archive(make("f.tar.gz", fine, b"hi"), tmp_path / "d3") / "b.txt").read_bytes() == b"hi"


def test_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    z = _zip(tmp_path / "big.zip", {"a": b"x" * 100, "b": b"y"})
    monkeypatch.setenv("CONCEPTS_MAX_ARCHIVE_BYTES", "50")
    with pytest.raises(UnsafeInputError, match="declares 101 uncompressed bytes") as e:
        arc.extract_archive(z, tmp_path / "d")
    assert "CONCEPTS_MAX_ARCHIVE_BYTES" in str(e.value)
    monkeypatch.setenv("CONCEPTS_MAX_ARCHIVE_BYTES", str(10**6))
    monkeypatch.setattr(arc, "MAX_MEMBERS", 1)
    with pytest.raises(UnsafeInputError, match="2 members"):
        arc.extract_archive(z, tmp_path / "d")


def test_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    with pytest.raises(SourceError, match="not a zip or tar archive"):
        arc.extract_archive(tmp_path / "x.zip", tmp_path / "d")
