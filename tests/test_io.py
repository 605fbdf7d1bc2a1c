import pytest

from clip_ping.io import atomic_write, atomic_write_text


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
