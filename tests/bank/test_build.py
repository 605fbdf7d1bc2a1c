"""Feature banks: extraction with both offline teachers, resume after SIGKILL, validation."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from clip_ping.bank import Bank, build_bank, dataset_fingerprint
from clip_ping.cli import main
from clip_ping.data.datasets import CsvDataset
from clip_ping.data.loader import DataSpec
from clip_ping.data.shapes import build_shapes
from clip_ping.data.shards import write_shards
from clip_ping.teachers import create_teacher

NUM_ROWS = 320
IMAGE_SIZE = "64"  # teacher input: the smallest that still gives a 2×2 feature map


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A 320-pair shapes corpus: small enough to embed with both teachers in seconds."""
    out = tmp_path_factory.mktemp("bank_shapes")
    build_shapes(out, num_train=NUM_ROWS, num_val=8, image_size=32, seed=1)
    return out


@pytest.fixture(scope="module")
def banks(corpus, tmp_path_factory):
    """Image and text banks and their neighbour tables, built through the CLI."""
    root = tmp_path_factory.mktemp("banks")
    data = ["--train-data", str(corpus / "train.csv")]
    assert (
        main(
            [
                "bank",
                "build",
                *data,
                "--modality",
                "image",
                "--out",
                str(root / "image"),
                "--image-size",
                IMAGE_SIZE,
                "--chunk-rows",
                "100",
                "--workers",
                "2",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "bank",
                "build",
                *data,
                "--modality",
                "text",
                "--out",
                str(root / "text"),
                "--chunk-rows",
                "128",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    for modality in ("image", "text"):
        assert main(["bank", "neighbors", str(root / modality), "--k", "5"]) == 0
    return root


@pytest.mark.parametrize(("modality", "dim"), [("image", 1280), ("text", 384)])
def test_banks_hold_each_samples_teacher_features(banks, corpus, modality, dim):
    bank = Bank(banks / modality)
    spec = DataSpec(str(corpus / "train.csv"))
    assert bank.features.shape == (NUM_ROWS, dim) and bank.features.dtype == np.float16
    assert isinstance(bank.features, np.memmap)
    norms = np.linalg.norm(bank.features.astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)
    assert bank.meta["fingerprint"] == dataset_fingerprint(spec, modality).digest
    assert bank.meta["teacher"] == {"image": "efficientnet-lite0", "text": "minilm"}[modality]
    assert "torch" in bank.meta["versions"] and not (banks / modality / "progress.json").exists()
    bank.check_dataset(spec, dim=dim)

    # Row i is sample i: compare rows from several chunks with a direct forward.
    image_size = int(IMAGE_SIZE) if modality == "image" else None
    teacher = create_teacher(None, modality, image_size)
    dataset = CsvDataset(corpus / "train.csv")
    rows = [0, 99, 100, 250, NUM_ROWS - 1]
    items = [dataset[i]["image"] if modality == "image" else dataset.captions[i] for i in rows]
    direct = teacher.encode(teacher.collate([teacher.preprocess(x) for x in items]))
    np.testing.assert_allclose(bank.features[rows].astype(np.float32), direct, atol=2e-3)


def test_killed_build_resumes_to_identical_bytes(corpus, tmp_path):
    settings = {"image_size": int(IMAGE_SIZE), "chunk_rows": 32, "batch_size": 8, "workers": 0}
    command = [
        sys.executable,
        "-m",
        "clip_ping.cli",
        "bank",
        "build",
        "--train-data",
        str(corpus / "train.csv"),
        "--modality",
        "image",
        "--out",
        str(tmp_path / "killed"),
    ]
    command += [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    env = dict(os.environ, OMP_NUM_THREADS="2")  # the same threads as the reference below

    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    progress, deadline = tmp_path / "killed" / "progress.json", time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        if progress.is_file() and json.loads(progress.read_text())["done"]:
            process.send_signal(signal.SIGKILL)  # right after the first chunk was flushed
            break
        time.sleep(0.005)
    assert process.wait() == -signal.SIGKILL
    done = json.loads(progress.read_text())["done"]
    assert 1 <= len(done) < NUM_ROWS // 32 and not (tmp_path / "killed" / "meta.json").exists()
    with pytest.raises(FileNotFoundError, match="interrupted"):
        Bank(tmp_path / "killed")

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:  # resume (what the CLI calls, minus the start-up), and an uninterrupted build
        spec = DataSpec(str(corpus / "train.csv"))
        build_bank(spec, "image", tmp_path / "killed", progress=False, **settings)
        whole = build_bank(spec, "image", tmp_path / "whole", progress=False, **settings)
    finally:
        torch.set_num_threads(threads)
    resumed = (tmp_path / "killed" / "features.npy").read_bytes()
    assert resumed == (whole / "features.npy").read_bytes()
    assert Bank(tmp_path / "killed").meta["fingerprint"] == Bank(whole).meta["fingerprint"]


def test_shards_give_the_csv_bank(banks, corpus, tmp_path):
    urls = write_shards(corpus / "train.csv", tmp_path / "shards", samples_per_shard=150)
    spec = DataSpec("::".join(urls))
    out = build_bank(spec, "image", tmp_path / "bank", image_size=int(IMAGE_SIZE), workers=0)
    np.testing.assert_allclose(
        Bank(out).features.astype(np.float32),
        Bank(banks / "image").features.astype(np.float32),
        atol=2e-3,
    )
    Bank(out).check_dataset(spec)
    with pytest.raises(ValueError, match="other data"):  # same count, other keys
        Bank(banks / "image").check_dataset(spec)


def test_mismatched_bank_fails_with_a_clear_error(banks, corpus, tmp_path):
    bank = Bank(banks / "text")
    with pytest.raises(ValueError) as error:
        bank.validate(bank.fingerprint, NUM_ROWS + 1, data="big.csv")
    message = str(error.value)
    assert "text bank" in message and "has 320 rows but --train-data big.csv has 321 samples"
    assert "rebuild it with clip-ping bank build --train-data big.csv --modality text" in message
    with pytest.raises(ValueError, match="holds 384-d features but the config expects 512-d"):
        bank.validate(bank.fingerprint, NUM_ROWS, dim=512)

    # Same images and count, one caption changed: the text bank no longer matches.
    lines = (corpus / "train.csv").read_text().splitlines()
    lines[5] = lines[5].replace("circle", "oval").replace("square", "oblong")
    (tmp_path / "images").symlink_to(corpus / "images")
    (tmp_path / "edited.csv").write_text("\n".join(lines) + "\n")
    edited = DataSpec(str(tmp_path / "edited.csv"))
    with pytest.raises(ValueError, match="was built from other data"):
        bank.check_dataset(edited)
    Bank(banks / "image").check_dataset(edited)  # image keys unchanged: still valid

    truncated = tmp_path / "truncated"
    shutil.copytree(banks / "text", truncated)
    size = (truncated / "features.npy").stat().st_size
    os.truncate(truncated / "features.npy", size - 1000)
    with pytest.raises(ValueError, match="truncated"):
        Bank(truncated)


def test_npy_features_and_folder_reuse(corpus, tmp_path):
    spec = DataSpec(str(corpus / "train.csv"))
    rows = np.random.default_rng(0).normal(size=(NUM_ROWS, 6)).astype(np.float32)
    np.save(tmp_path / "mine.npy", rows)
    out = build_bank(spec, "text", tmp_path / "bank", teacher=f"npy:{tmp_path / 'mine.npy'}")
    expected = torch.nn.functional.normalize(torch.from_numpy(rows), dim=1).numpy()
    np.testing.assert_allclose(Bank(out).features.astype(np.float32), expected, atol=1e-3)
    build_bank(spec, "text", out, teacher=f"npy:{tmp_path / 'mine.npy'}")  # complete: no-op
    with pytest.raises(ValueError, match="already holds a complete text bank"):
        build_bank(spec, "image", out, teacher=f"npy:{tmp_path / 'mine.npy'}")

    np.save(tmp_path / "short.npy", rows[:-1])
    with pytest.raises(ValueError, match="has 319 rows but --train-data .* has 320 samples"):
        build_bank(spec, "text", tmp_path / "other", teacher=f"npy:{tmp_path / 'short.npy'}")


def test_non_finite_teacher_features_are_bad_rows_never_neighbours(corpus, tmp_path, capsys):
    rows = np.random.default_rng(2).normal(size=(NUM_ROWS, 6)).astype(np.float32)
    rows[5, 2], rows[17, :] = np.nan, np.inf
    np.save(tmp_path / "f.npy", rows)
    out = tmp_path / "bank"
    build = [
        "bank",
        "build",
        "--train-data",
        str(corpus / "train.csv"),
        "--modality",
        "text",
        "--teacher",
        f"npy:{tmp_path / 'f.npy'}",
        "--workers",
        "0",
    ]
    assert main([*build, "--out", str(out)]) == 0
    assert "skipped bad sample row 17 of the npy:" in capsys.readouterr().err
    bank = Bank(out)
    assert bank.skipped.tolist() == [5, 17]
    assert json.loads((out / "meta.json").read_text())["skipped"] == [5, 17]
    features = np.asarray(bank.features, dtype=np.float32)
    assert np.isfinite(features).all() and not features[[5, 17]].any()
    # Before: 198 of 200 rows had the NaN and inf rows as neighbours.
    assert main(["bank", "neighbors", str(out), "--k", "5", "--backend", "exact"]) == 0
    neighbors, similarities = bank.neighbors()
    assert not np.isin(neighbors, [5, 17]).any() and np.isfinite(similarities).all()
    # --on-bad-sample error: the build stops, naming the row.
    assert main([*build, "--out", str(tmp_path / "strict"), "--on-bad-sample", "error"]) == 2
    assert "row 5 of the npy:" in capsys.readouterr().err
    assert not (tmp_path / "strict" / "meta.json").exists()


def test_overwritten_images_make_the_image_bank_stale(tmp_path, caplog):
    corpus = tmp_path / "corpus"
    build_shapes(corpus, num_train=24, num_val=4, image_size=16, seed=3)
    spec = DataSpec(str(corpus / "train.csv"))
    np.save(tmp_path / "f.npy", np.random.default_rng(3).normal(size=(24, 4)))
    teacher = f"npy:{tmp_path / 'f.npy'}"
    image = Bank(build_bank(spec, "image", tmp_path / "image", teacher=teacher, workers=0))
    text = Bank(build_bank(spec, "text", tmp_path / "text", teacher=teacher, workers=0))
    meta = json.loads((image.path / "meta.json").read_text())
    assert meta["fingerprint_covers"] == "image paths, file sizes and modification times"
    image.check_dataset(spec)

    # Overwrite one image with other pixels (its time set explicitly: no clock dependence).
    path = corpus / CsvDataset(corpus / "train.csv").keys()[7]
    before = path.stat()
    from PIL import Image

    Image.new("RGB", (16, 16), (1, 2, 3)).save(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 5_000_000_000))
    with pytest.raises(ValueError, match="samples or files changed since it was built"):
        image.check_dataset(spec)  # passed before: the fingerprint covered paths only
    with pytest.raises(ValueError, match="of other data: .* file sizes and modification times"):
        build_bank(spec, "image", image.path, teacher=teacher, workers=0)  # not "nothing to do"
    text.check_dataset(spec)  # the captions are unchanged: the text bank is still good

    # A bank of an earlier version (paths only, no fingerprint_covers) is still read, with
    # a warning saying how to get the check; building over it names the fix.
    legacy = dataset_fingerprint(spec, "image", file_stamps=False)
    meta.pop("fingerprint_covers")
    meta["fingerprint"] = legacy.digest
    (image.path / "meta.json").write_text(json.dumps(meta))
    with caplog.at_level("WARNING", logger="clip_ping"):
        Bank(image.path).check_dataset(spec)
    assert "covers only the image paths" in caplog.text and "bank build --out" in caplog.text
    with pytest.raises(ValueError, match="earlier clip-ping.*delete .* and rerun"):
        build_bank(spec, "image", image.path, teacher=teacher, workers=0)


def test_torchrun_build_equals_single_process(corpus, tmp_path):
    rows = np.random.default_rng(1).normal(size=(NUM_ROWS, 8)).astype(np.float16)
    np.save(tmp_path / "f.npy", rows)
    args = [
        "-m",
        "clip_ping.cli",
        "bank",
        "build",
        "--train-data",
        str(corpus / "train.csv"),
        "--modality",
        "image",
        "--teacher",
        f"npy:{tmp_path / 'f.npy'}",
        "--chunk-rows",
        "50",
        "--workers",
        "0",
        "--device",
        "cpu",
    ]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    subprocess.run([*launch, *args, "--out", str(tmp_path / "two")], check=True)
    single = build_bank(
        DataSpec(str(corpus / "train.csv")),
        "image",
        tmp_path / "one",
        teacher=f"npy:{tmp_path / 'f.npy'}",
        chunk_rows=50,
        workers=0,
    )
    assert Bank(tmp_path / "two").features.tobytes() == Bank(single).features.tobytes()


def test_contact_sheet_and_cli_errors(banks, corpus, tmp_path, capsys):
    sheet = tmp_path / "sheet.png"
    code = main(
        [
            "bank",
            "show",
            "--image-bank",
            str(banks / "image"),
            "--text-bank",
            str(banks / "text"),
            "--train-data",
            str(corpus / "train.csv"),
            "--out",
            str(sheet),
            "--num-anchors",
            "3",
            "--num-neighbors",
            "2",
        ]
    )
    assert code == 0 and sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    assert Image.open(sheet).size[0] > 500  # 5 thumbnails wide
    # Banks swapped: a clear error, exit status 2.
    code = main(
        [
            "bank",
            "show",
            "--image-bank",
            str(banks / "text"),
            "--text-bank",
            str(banks / "image"),
            "--train-data",
            str(corpus / "train.csv"),
            "--out",
            str(sheet),
        ]
    )
    assert code == 2 and "is a text bank" in capsys.readouterr().err
    assert main(["bank", "neighbors", str(banks / "text"), "--k", str(NUM_ROWS)]) == 2
    assert "need 1 <= k < number of rows" in capsys.readouterr().err
