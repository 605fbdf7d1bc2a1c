"""A full disk anywhere a command writes is one line naming the folder and the fix, never
an internal error or a crash; what was written before stays whole. Each case fills a real
tmpfs (:mod:`small_disk`)."""

import errno
import os
import subprocess
import sys

import pytest

from clip_ping.data.shapes import build_shapes
from clip_ping.errors import describe_failure
from clip_ping.io import atomic_write_text
from clip_ping.models import create_model, export_hf
from small_disk import small_disk


def test_a_full_disk_while_exporting_is_a_clear_error_leaving_nothing_half_written(tmp_path):
    model, tokenizer = create_model("cpu-micro-32", seed=0)
    with small_disk(tmp_path / "disk", "300k") as disk:
        with pytest.raises(OSError) as caught:  # was safetensors' own error: "(a bug)"
            export_hf(model, tokenizer, disk / "run" / "hf")
        assert caught.value.errno == errno.ENOSPC
        message, status = describe_failure(caught.value)
        assert status == 1 and "internal error" not in message
        assert message.startswith(f"could not write the export {disk / 'run' / 'hf'} (No space")
        assert f"Free space in {disk / 'run'}, then write it again" in message
        assert [p.name for p in (disk / "run").iterdir()] == []  # no staging folder left


def _cli(*args):
    command = [sys.executable, "-m", "clip_ping.cli", *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def _fill(disk):
    """Write a filler file until ``disk`` is full; return it."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as file:
        try:
            while True:
                file.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs")
    build_shapes(out, num_train=200, num_val=8, image_size=16, seed=0)
    return out / "train.csv"


def test_a_full_disk_during_a_bank_build_or_mining_is_one_line_and_resumes(pairs, tmp_path):
    reference = tmp_path / "reference"  # the same bank, built on a disk with room
    assert (
        _cli(
            "bank",
            "build",
            "--train-data",
            pairs,
            "--modality",
            "text",
            "--out",
            reference,
            "--workers",
            0,
        ).returncode
        == 0
    )
    with small_disk(tmp_path / "disk", "100k") as disk:  # 200 x 384 float16 need 154 KB
        bank = disk / "t"
        build = (
            "bank",
            "build",
            "--train-data",
            pairs,
            "--modality",
            "text",
            "--out",
            bank,
            "--workers",
            0,
        )
        full = _cli(*build)
        assert full.returncode == 1, full.stderr[-2000:]  # was 135: SIGBUS, no message
        last = full.stderr.strip().splitlines()[-1]
        assert last == (
            f"clip-ping: error: could not write {bank / 'features.npy'} (No space left on "
            f"device); free space in {bank}, then rerun the same command to resume "
            "the build"
        )
        subprocess.run(["mount", "-o", "remount,size=2m", str(disk)], check=True)
        assert _cli(*build).returncode == 0
        features = (bank / "features.npy").read_bytes()
        assert features == (reference / "features.npy").read_bytes()  # as if never stopped
        filler = _fill(disk)
        mine = _cli("bank", "neighbors", bank, "--k", 5, "--backend", "exact")
        assert mine.returncode == 1, mine.stderr[-2000:]
        assert (
            mine.stderr.strip()
            .splitlines()[-1]
            .endswith(
                f"(No space left on device); free space in {bank}, then rerun clip-ping bank "
                f"neighbors {bank} --k 5"
            )
        )
        assert sorted(p.name for p in bank.iterdir()) == ["features.npy", "meta.json"]
        filler.unlink()
        assert _cli("bank", "neighbors", bank, "--k", 5, "--backend", "exact").returncode == 0


def test_a_write_refused_names_the_file_asked_for_not_its_temporary(tmp_path):
    with small_disk(tmp_path / "disk", "100k") as disk:
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)  # binds for root
        with pytest.raises(OSError) as refused:
            atomic_write_text(disk / "sheet.png", "x")
        assert refused.value.errno == errno.EROFS
        assert refused.value.filename == str(disk / "sheet.png")  # was .sheet.png.XXXX.tmp
        message, status = describe_failure(refused.value)
        assert status == 1 and f"'{disk / 'sheet.png'}'" in message
