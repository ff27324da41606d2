import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.training.helpers import CLASS_NAMES
from training.archive import ArchiveError, ensure_extracted, extract_archive
from training.config import DEFAULT_SPLIT
from training.split import create_manifest


def _tar_gz(image_folder: Path, path: Path, top: str) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(image_folder, arcname=top)
    return path


def _zip(image_folder: Path, path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for file in sorted(image_folder.rglob("*.png")):
            zf.write(file, file.relative_to(image_folder).as_posix())
    return path


def _tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"x") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


def _zip_with(path: Path, name: str, data: bytes = b"x") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok/fine.txt", b"fine")
        zf.writestr(zipfile.ZipInfo(name), data)
    return path


def test_tar_gz_with_a_top_level_folder(image_folder: Path, tmp_path: Path) -> None:
    archive = _tar_gz(image_folder, tmp_path / "set.tar.gz", "dataset-resized-rgb-112")
    manifest, root = create_manifest(archive, tmp_path / "cache", seed=0, fractions=DEFAULT_SPLIT)
    assert manifest.class_names == CLASS_NAMES
    assert len(manifest.items) == 48
    assert manifest.root == "dataset-resized-rgb-112"
    assert root == tmp_path / "cache" / "dataset-resized-rgb-112"
    assert manifest.source_sha256 is not None
    assert len(manifest.source_sha256) == 64
    # A second open reuses the extraction instead of extracting again.
    assert ensure_extracted(archive, tmp_path / "cache", sha256=manifest.source_sha256) == tmp_path / "cache"


def test_zip_without_a_top_level_folder(image_folder: Path, tmp_path: Path) -> None:
    archive = _zip(image_folder, tmp_path / "set.zip")
    manifest, root = create_manifest(archive, tmp_path / "cache", seed=0, fractions=DEFAULT_SPLIT)
    assert manifest.class_names == CLASS_NAMES
    assert len(manifest.items) == 48
    assert manifest.root == "."
    assert (root / manifest.items[0].path).is_file()


@pytest.mark.parametrize(
    "name", ["../evil.png", "ok/../../evil.png", "..\\evil.png", "/tmp/evil.png", "C:/evil.png"]
)
def test_zip_slip_and_absolute_paths_are_rejected(tmp_path: Path, name: str) -> None:
    archive = _zip_with(tmp_path / "bad.zip", name)
    dest = tmp_path / "out" / "dest"
    with pytest.raises(ArchiveError, match=r"absolute|escapes"):
        extract_archive(archive, dest)
    assert not dest.exists()
    assert not (tmp_path / "evil.png").exists()
    assert not (tmp_path / "out" / "evil.png").exists()
    assert list((tmp_path / "out").iterdir()) == []  # the staging folder is cleaned up


@pytest.mark.parametrize("name", ["../evil.png", "/abs/evil.png"])
def test_tar_slip_and_absolute_paths_are_rejected(tmp_path: Path, name: str) -> None:
    archive = _tar_with(tmp_path / "bad.tar.gz", tarfile.TarInfo(name))
    with pytest.raises(ArchiveError, match=r"absolute|escapes"):
        extract_archive(archive, tmp_path / "out" / "dest")
    assert not (tmp_path / "out" / "dest").exists()
    assert not (tmp_path / "evil.png").exists()


@pytest.mark.parametrize("target", ["../../../etc/passwd", "/etc/passwd"])
def test_links_escaping_the_target_are_rejected(tmp_path: Path, target: str) -> None:
    link = tarfile.TarInfo("data/cls/link.png")
    link.type, link.linkname = tarfile.SYMTYPE, target
    archive = _tar_with(tmp_path / "bad.tar.gz", link)
    with pytest.raises(ArchiveError, match="link escapes"):
        extract_archive(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_links_inside_the_target_are_skipped(tmp_path: Path) -> None:
    link = tarfile.TarInfo("data/cls/link.png")
    link.type, link.linkname = tarfile.SYMTYPE, "other.png"
    dest = extract_archive(_tar_with(tmp_path / "ok.tar.gz", link), tmp_path / "dest")
    assert not (dest / "data/cls/link.png").exists()


def test_file_count_and_size_are_capped(image_folder: Path, tmp_path: Path) -> None:
    archive = _zip(image_folder, tmp_path / "set.zip")
    with pytest.raises(ArchiveError, match="more than 10 files"):
        extract_archive(archive, tmp_path / "a", max_files=10)
    with pytest.raises(ArchiveError, match="more than 1000 bytes"):
        extract_archive(archive, tmp_path / "b", max_bytes=1000)
    tar = _tar_gz(image_folder, tmp_path / "set.tgz", "top")
    with pytest.raises(ArchiveError, match="more than 1000 bytes"):
        extract_archive(tar, tmp_path / "c", max_bytes=1000)
    assert not any((tmp_path / name).exists() for name in "abc")


def test_a_different_archive_does_not_reuse_an_extraction(image_folder: Path, tmp_path: Path) -> None:
    first = _zip(image_folder, tmp_path / "one.zip")
    ensure_extracted(first, tmp_path / "cache")
    (image_folder / "glass" / "glass0.png").unlink()
    second = _zip(image_folder, tmp_path / "two.zip")
    with pytest.raises(ArchiveError, match="does not hold an extraction"):
        ensure_extracted(second, tmp_path / "cache")
