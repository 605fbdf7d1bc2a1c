"""The ``clip-ping`` entry point: an expected failure is one line and a non-zero exit, a
traceback only with ``--debug``. Each case runs the installed command in a subprocess."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from torch.utils.data import DataLoader, Dataset

from clip_ping.errors import UserError, describe_failure, one_line

# The installed console script beside this interpreter (the venv's), else the one on PATH.
CLI = shutil.which("clip-ping", path=str(Path(sys.executable).parent)) or "clip-ping"


def clip_ping(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny CSV, a broken tokenizer folder, an anchor-bomb config."""
    root = tmp_path_factory.mktemp("cli_inputs")
    (root / "train.csv").write_text("filepath,title\na.png,a red circle\n")
    (root / "badtok").mkdir()
    (root / "badtok" / "tokenizer.json").write_text("{not json")
    (root / "bomb.yaml").write_text(
        'train_data: train.csv\na: &a ["lol", "lol", "lol"]\nname: [*a, *a, *a]\n'
    )
    return root


TRAIN = ("train", "--train-data", "train.csv", "--logs", "logs")
# (arguments, exit status, what the one line says). Before: the last three ran (gradient
# ascent, a non-finite checkpoint, forking until the OOM killer), or ended in a traceback.
CASES = [
    pytest.param(
        (*TRAIN, "--device", "bogus"),
        2,
        "--device 'bogus' is no device; use auto, cpu, cuda",
        id="device",
    ),
    pytest.param(
        (*TRAIN, "--tokenizer", "badtok"),
        2,
        "badtok/tokenizer.json is not a readable tokenizer",
        id="tokenizer",
    ),
    pytest.param(
        ("train", "--config", "bomb.yaml"),
        2,
        "line 2, column 4: anchors and aliases",
        id="yaml-bomb",
    ),
    pytest.param(
        (*TRAIN, "--seed", "-5"),
        2,
        "--seed=-5 is out of range: must be a whole number in [0, ",
        id="seed",
    ),
    pytest.param(
        (*TRAIN, "--grad-clip-norm", "-1"),
        2,
        "--grad-clip-norm=-1.0 is out of range",
        id="grad-clip",
    ),
    pytest.param(
        (*TRAIN, "--lr", "inf"),
        2,
        "--lr=inf is out of range: must be a finite number above 0",
        id="lr",
    ),
    pytest.param(
        (*TRAIN, "--workers", "100000"),
        2,
        "--workers 100,000 is more worker processes than",
        id="workers",
    ),
    pytest.param(
        (
            "bank",
            "build",
            "--train-data",
            "train.csv",
            "--modality",
            "image",
            "--out",
            "bank",
            "--workers",
            "100000",
        ),
        2,
        "--workers 100,000 is more worker processes than this machine can run: at most",
        id="bank-workers",
    ),
]


@pytest.mark.parametrize("args,status,says", CASES)
def test_expected_failures_are_one_line_and_a_non_zero_exit(inputs, tmp_path, args, status, says):
    for name in ("train.csv", "badtok", "bomb.yaml"):
        (tmp_path / name).symlink_to(inputs / name)
    result = clip_ping(*args, cwd=tmp_path)
    assert result.returncode == status, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("clip-ping: error: "), result.stderr
    assert says in lines[0]
    if "--tokenizer" not in args:  # settings: refused before any work or worker started
        assert not (tmp_path / "logs").exists() and not (tmp_path / "bank").exists()


def test_debug_shows_the_traceback_before_or_after_the_command(inputs, tmp_path):
    (tmp_path / "train.csv").symlink_to(inputs / "train.csv")
    for args in (("--debug", *TRAIN), (*TRAIN, "--debug")):
        result = clip_ping(*args, "--device", "bogus", cwd=tmp_path)
        assert result.returncode == 2
        assert "Traceback (most recent call last)" in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("clip-ping: error: --device")


def test_a_bug_is_named_as_one_and_points_to_debug():
    message, status = describe_failure(KeyError("task"))
    assert status == 1
    assert (
        message == "internal error: KeyError: 'task' (a bug: rerun with --debug for its traceback)"
    )
    assert describe_failure(UserError("--lr=inf is out of range"))[1] == 2
    assert describe_failure(PermissionError(13, "Permission denied"))[1] == 1


class _Refuses(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        raise UserError(f"sample {index} is bad; pass --on-bad-sample skip")


def test_an_error_from_a_loader_worker_is_its_own_message_not_the_worker_traceback():
    with pytest.raises(UserError) as info:
        next(iter(DataLoader(_Refuses(), batch_size=1, num_workers=1)))
    assert "Original Traceback" in str(info.value)  # what PyTorch re-raises
    assert one_line(info.value) == "sample 0 is bad; pass --on-bad-sample skip"
