"""chipfuse.io: bounded reads, atomic writes and early write checks give one clear message each."""

from __future__ import annotations

import os

import pytest

from chipfuse.errors import ChipfuseError, SpecError
from chipfuse.io import check_writable, read_text_bounded, write_text_atomic


def test_read_text_bounded_reads_utf8(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("héllo", encoding="utf-8")
    assert read_text_bounded(f, "test file", 100) == "héllo"


def test_read_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(ChipfuseError, match="no such test file"):
        read_text_bounded(tmp_path / "nope", "test file", 100)
    with pytest.raises(ChipfuseError, match="is a directory, not a test file"):
        read_text_bounded(tmp_path, "test file", 100)
    big = tmp_path / "big.txt"
    big.write_text("x" * 2000)
    with pytest.raises(ChipfuseError, match=r"too large for a test file \(2 KiB; the limit is 1000 bytes\)"):
        read_text_bounded(big, "test file", 1000)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xffdef")
    with pytest.raises(ChipfuseError, match="byte 0xff at offset 3"):
        read_text_bounded(bad, "test file", 100)


def test_read_refuses_pipes_without_blocking(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ChipfuseError, match="not a regular file"):
        read_text_bounded(fifo, "test file", 100)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_read_unreadable_file(tmp_path):
    f = tmp_path / "secret"
    f.write_text("x")
    f.chmod(0)
    with pytest.raises(ChipfuseError, match="permission denied"):
        read_text_bounded(f, "test file", 100)


def test_read_uses_the_callers_error_class(tmp_path):
    with pytest.raises(SpecError):
        read_text_bounded(tmp_path / "nope", "system file", 100, error=SpecError)


def test_check_writable(tmp_path):
    check_writable(tmp_path / "new.json")
    with pytest.raises(ChipfuseError, match=r"folder .*missing does not exist"):
        check_writable(tmp_path / "missing" / "x.json")
    with pytest.raises(ChipfuseError, match="is a directory"):
        check_writable(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes everywhere")
def test_check_writable_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ChipfuseError, match="not writable"):
            check_writable(ro / "x.json")
    finally:
        ro.chmod(0o700)


def test_write_text_atomic_replaces_and_leaves_no_temp_file(tmp_path):
    f = tmp_path / "out.txt"
    write_text_atomic(f, "one")
    f.chmod(0o640)
    write_text_atomic(f, "two ü")
    assert f.read_text(encoding="utf-8") == "two ü"
    assert oct(f.stat().st_mode & 0o777) == oct(0o640)
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_write_text_atomic_new_file_gets_normal_permissions(tmp_path):
    f = tmp_path / "new.txt"
    write_text_atomic(f, "x")
    mask = os.umask(0)
    os.umask(mask)
    assert f.stat().st_mode & 0o777 == 0o666 & ~mask


def test_write_text_atomic_into_missing_folder(tmp_path):
    with pytest.raises(ChipfuseError, match="does not exist"):
        write_text_atomic(tmp_path / "no" / "x.txt", "x")
