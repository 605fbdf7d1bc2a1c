import csv
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clip_ping.data import tars
from clip_ping.data.bad_samples import BadSample
from clip_ping.data.datasets import CsvDataset
from clip_ping.data.shapes import build_shapes
from clip_ping.data.shards import ShardDataset, write_shards
from clip_ping.data.tars import build_key_index, default_key_index_path, expand_urls
from clip_ping.data.transforms import CLIP_MEAN, CLIP_STD, EvalTransform, TrainTransform


def unnormalise(image):
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    return image * std + mean


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    info = build_shapes(out, num_train=50, num_val=10, image_size=32, seed=0)
    shards = write_shards(info["train_csv"], out / "shards", samples_per_shard=16)
    return info, shards


def _write_csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)


def _transparent_png(path):
    # Transparent pixels whose colour channels are black: wrong compositing shows black.
    pixels = np.zeros((32, 32, 4), dtype=np.uint8)
    pixels[8:24, 8:24] = (255, 0, 0, 255)
    Image.fromarray(pixels, "RGBA").save(path)


def test_csv_index_is_row_and_text_is_tokenized_caption(corpus, tokenizer):
    info, _ = corpus
    ds = CsvDataset(info["train_csv"], transform=EvalTransform(32), tokenizer=tokenizer)
    with open(info["train_csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(ds) == 50 and ds.keys() == [r["filepath"] for r in rows]
    assert ds.labels == [int(r["label"]) for r in rows]
    for i in (0, 17, 49):
        sample = ds[i]
        assert sample["index"] == i
        assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.float32
        assert torch.equal(sample["text"], tokenizer([rows[i]["title"]])[0])
        assert ds[(3, i)]["index"] == i
    with pytest.raises(IndexError):
        ds[50]


def test_augmentation_depends_on_seed_epoch_index_only(corpus):
    info, _ = corpus
    ds = CsvDataset(info["train_csv"], transform=TrainTransform(32, scale=(0.3, 0.6)))
    assert torch.equal(ds[(1, 4)]["image"], ds[(1, 4)]["image"])
    assert not torch.equal(ds[(1, 4)]["image"], ds[(2, 4)]["image"])
    other_seed = CsvDataset(
        info["train_csv"], transform=TrainTransform(32, scale=(0.3, 0.6)), seed=1
    )
    assert not torch.equal(ds[(1, 4)]["image"], other_seed[(1, 4)]["image"])


def test_tsv_custom_columns_and_root(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (20, 20), (0, 0, 255)).save(tmp_path / "imgs" / "a.png")
    _write_csv(tmp_path / "pairs.tsv", ["cap", "img"], [["a, blue, square", "a.png"]], "\t")
    ds = CsvDataset(
        tmp_path / "pairs.tsv", img_key="img", caption_key="cap", root=tmp_path / "imgs"
    )
    sample = ds[0]
    assert sample["text"] == "a, blue, square" and ds.labels is None
    assert sample["image"].getpixel((5, 5)) == (0, 0, 255)  # no transform: the RGB image


def test_missing_column_names_column_found_columns_and_flag(tmp_path):
    _write_csv(tmp_path / "pairs.csv", ["filepath", "caption"], [["a.png", "x"]])
    with pytest.raises(ValueError) as error:
        CsvDataset(tmp_path / "pairs.csv")
    message = str(error.value)
    assert "'title'" in message and "['filepath', 'caption']" in message
    assert "--csv-caption-key" in message
    # A TSV read as CSV: one merged column, so the hint names --csv-separator too.
    _write_csv(tmp_path / "tabs.csv", ["filepath", "title"], [["a.png", "x"]], "\t")
    with pytest.raises(ValueError, match="--csv-img-key.*--csv-separator"):
        CsvDataset(tmp_path / "tabs.csv")


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        CsvDataset(tmp_path / "nope.csv")
    _write_csv(tmp_path / "pairs.csv", ["filepath", "title"], [["gone.png", "x"]])
    with pytest.raises(BadSample, match="gone.png.*row 0.*not found.*--on-bad-sample skip"):
        CsvDataset(tmp_path / "pairs.csv")[0]


def test_a_fifo_or_folder_listed_as_an_image_is_a_bad_sample_not_a_hang(tmp_path):
    os.mkfifo(tmp_path / "f.png")  # open() of a FIFO waits for a writer that never comes
    (tmp_path / "d.png").mkdir()
    rows = [["f.png", "a fifo"], ["d.png", "a folder"]]
    _write_csv(tmp_path / "pairs.csv", ["filepath", "title"], rows)
    with pytest.raises(BadSample, match=r"'f\.png' \(row 0.*not a regular file"):
        CsvDataset(tmp_path / "pairs.csv")[0]
    skipping = CsvDataset(tmp_path / "pairs.csv", on_bad_sample="skip")
    assert [skipping[i]["bad"].split(" (")[0] for i in (0, 1)] == ["not a regular file"] * 2


def test_alpha_is_composited_on_white_in_csv_and_shards(tmp_path):
    _transparent_png(tmp_path / "alpha.png")
    _write_csv(tmp_path / "pairs.csv", ["filepath", "title"], [["alpha.png", "a red square"]])
    ds = CsvDataset(tmp_path / "pairs.csv", transform=EvalTransform(32))
    shards = write_shards(ds, tmp_path / "shards")
    from_shards = next(iter(ShardDataset(shards, EvalTransform(32), shuffle=False)))
    for image in (ds[0]["image"], from_shards["image"]):
        pixels = unnormalise(image)
        assert torch.allclose(pixels[:, 2, 2], torch.ones(3), atol=0.02)  # background: white
        assert torch.allclose(pixels[:, 16, 16], torch.tensor([1.0, 0, 0]), atol=0.02)


def test_expand_urls():
    assert expand_urls("d/{0..2}.tar::e/x.tar") == ["d/0.tar", "d/1.tar", "d/2.tar", "e/x.tar"]
    assert expand_urls(["a/{00..01}.tar", "pipe:cat b.tar"]) == [
        "a/00.tar",
        "a/01.tar",
        "pipe:cat b.tar",
    ]


def test_write_shards_layout(corpus):
    info, shards = corpus
    folder = Path(shards[0]).parent
    assert [Path(s).name for s in shards] == ["00000.tar", "00001.tar", "00002.tar", "00003.tar"]
    sizes = json.loads((folder / "sizes.json").read_text())
    assert sizes == {"00000.tar": 16, "00001.tar": 16, "00002.tar": 16, "00003.tar": 2}
    first = list(tars.iter_shard(shards[1]))[0]
    position, key, files = first
    assert (position, key, sorted(files)) == (0, "0000100", ["json", "png", "txt"])
    assert json.loads(files["json"])["csv_row"] == 16


def test_iter_shard_reads_only_the_requested_samples(corpus, monkeypatch):
    _, shards = corpus
    read = []
    extract = tarfile.TarFile.extractfile
    monkeypatch.setattr(
        tarfile.TarFile, "extractfile", lambda self, m: read.append(m.name) or extract(self, m)
    )
    assert [key for _, key, _ in tars.iter_shard(shards[0], read=False)][-1] == "0000015"
    assert read == []
    samples = list(tars.iter_shard(shards[0], start=10, stop=12))
    assert [(position, key) for position, key, _ in samples] == [(10, "0000010"), (11, "0000011")]
    assert sorted(read) == [f"00000{i}.{ext}" for i in (10, 11) for ext in ("json", "png", "txt")]


def test_key_index_order_cache_and_rebuild(corpus, monkeypatch):
    _, shards = corpus
    cache = default_key_index_path(shards)
    cache.unlink(missing_ok=True)
    index = build_key_index(shards)
    assert index.counts == (16, 16, 16, 2) and index.offsets == (0, 16, 32, 48)
    assert index.index_of("0000215") == 47 and index.keys[48] == "0000300"
    assert cache.is_file()

    def no_scan(*args, **kwargs):
        raise AssertionError("the cached key index should have been used")

    monkeypatch.setattr(tars, "iter_shard", no_scan)
    assert build_key_index(shards) == index
    # Another shard list is another index (and another cache file), which must be scanned.
    with pytest.raises(AssertionError, match="cached key index"):
        build_key_index(shards[:2])


def test_shards_match_csv_rows_local_and_pipe(corpus, tokenizer):
    info, shards = corpus
    ds = CsvDataset(info["train_csv"], tokenizer=tokenizer)
    for urls in (shards, [f"pipe:cat {s}" for s in shards]):
        stream = ShardDataset(
            urls, EvalTransform(32), tokenizer, build_key_index(urls), shuffle=False
        )
        samples = list(stream)
        assert [s["index"] for s in samples] == list(range(50))
        for s in samples[::7]:
            assert torch.equal(s["text"], ds[s["index"]]["text"])


def test_resume_skips_without_decoding(corpus, monkeypatch):
    _, shards = corpus
    stream = ShardDataset(shards, EvalTransform(32), batch_size=5, shuffle_buffer=20)
    stream.set_epoch(2)
    full = [s["index"] for s in stream]
    assert sorted(full) == list(range(50)) and full != list(range(50))
    decoded = []
    decode = ShardDataset._decode
    monkeypatch.setattr(
        ShardDataset, "_decode", lambda self, i, f: decoded.append(i) or decode(self, i, f)
    )
    stream.set_epoch(2, start_batch=7)
    assert [s["index"] for s in stream] == full[35:] == decoded


def test_missing_shard_and_duplicate_keys(corpus, tmp_path):
    _, shards = corpus
    with pytest.raises(FileNotFoundError, match="00004.tar not found .6 of 10"):
        build_key_index(str(Path(shards[0]).parent / "{00000..00009}.tar"))
    duplicate = tmp_path / "dup.tar"
    duplicate.write_bytes(Path(shards[0]).read_bytes())
    with pytest.raises(ValueError, match="'0000000' occurs more than once"):
        build_key_index([shards[0], str(duplicate)])


def test_the_teacher_view_is_the_students_crop_at_the_teachers_size():
    """--neighbor-source active: the teacher sees the student's crop box of the full image at
    its own input size (as its bank saw images), not the small student view upscaled."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (160, 200, 3), dtype=np.uint8))
    both = TrainTransform(32, scale=(0.4, 0.6), teacher_size=96)
    views = both(image, np.random.default_rng(7))
    student = TrainTransform(32, scale=(0.4, 0.6))(image, np.random.default_rng(7))
    assert torch.equal(views["image"], student)  # the student's view is unchanged
    box = both.crop_box(200, 160, np.random.default_rng(7))
    crop = image.resize((96, 96), Image.Resampling.BICUBIC, box=box)
    expected = torch.from_numpy(np.asarray(crop, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
    torch.testing.assert_close(views["teacher_image"], expected, atol=1e-5, rtol=0)
    # Upscaling the student's 32 px view loses what the 96 px crop keeps.
    upscaled = torch.nn.functional.interpolate(
        (student * torch.tensor(CLIP_STD).view(3, 1, 1) + torch.tensor(CLIP_MEAN).view(3, 1, 1))[
            None
        ]
        * 2
        - 1,
        size=96,
        mode="bicubic",
        align_corners=False,
    )[0]
    assert (upscaled - expected).abs().mean() > 0.1


def test_readers_pass_the_teacher_view_on(corpus):
    info, _ = corpus
    dataset = CsvDataset(info["train_csv"], transform=TrainTransform(32, teacher_size=64))
    sample = dataset[(0, 3)]
    assert sample["image"].shape == (3, 32, 32) and sample["teacher_image"].shape == (3, 64, 64)


@pytest.mark.parametrize(
    ("name", "pixels", "white"),
    [
        ("gray16.png", np.uint16, 65535),  # PIL mode I;16
        ("int32.tif", np.int32, 65535),  # 16-bit data in a 32-bit TIFF (mode I)
        ("wide32.tif", np.int32, 2**31 - 1),  # the full 32-bit range
        ("float32.tif", np.float32, 1.0),  # a float image in 0-1 (mode F)
    ],
)
def test_deep_grayscale_images_are_scaled_not_saturated(tmp_path, name, pixels, white):
    ramp = np.linspace(0, 1, 64 * 64).reshape(64, 64)  # black to white
    Image.fromarray((ramp * white).astype(pixels)).save(tmp_path / name)
    _write_csv(tmp_path / "pairs.csv", ["filepath", "title"], [[name, "a grey ramp"]])
    image = np.asarray(CsvDataset(tmp_path / "pairs.csv")[0]["image"])  # RGB, 8 bits
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    expected = ramp * 255
    # PIL's convert("RGB") clipped these at 255: over 99% of the pixels were white.
    assert (image == 255).mean() < 0.01
    assert np.abs(image[..., 0] - expected).max() <= 1
