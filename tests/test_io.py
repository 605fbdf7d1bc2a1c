import os
import stat

import pytest

from clip_ping.io import atomic_directory, atomic_write, atomic_write_text


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "latest.pt"
    atomic_write_text(target, "old")

    def crash(f):
        f.write(b"half of the new")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, crash)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


@pytest.fixture
def umask():
    """Set the process umask for one test; restore it after."""
    previous = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(previous)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_atomic_writes_give_the_permissions_of_a_plain_open(tmp_path, umask, mask):
    umask(mask)
    with open(tmp_path / "plain", "w") as f:
        f.write("x")
    (tmp_path / "plain-dir").mkdir()
    atomic_write_text(tmp_path / "atomic", "x")
    with atomic_directory(tmp_path / "folder") as staging:
        (staging / "inside").write_text("x")
        (staging / "private").write_text("x")
        (staging / "private").chmod(0o600)  # as a writer using mkstemp leaves its file
    mode = lambda name: stat.S_IMODE((tmp_path / name).stat().st_mode)  # noqa: E731
    assert mode("atomic") == mode("plain") == 0o666 & ~mask
    assert mode("folder") == mode("plain-dir") == 0o777 & ~mask
    assert mode("folder/private") == mode("plain")
    assert (tmp_path / "folder" / "inside").read_text() == "x"


def test_a_failed_folder_write_keeps_the_previous_folder(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "old").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "hf") as staging:
        (staging / "new").write_text("half")
        raise RuntimeError("killed")
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]
    assert [p.name for p in (tmp_path / "hf").iterdir()] == ["old"]
