from pathlib import Path

import pytest
import torch
from PIL import Image

import clip_ping
from clip_ping.models import MODEL_SPECS, ClipStudent, create_model, export_hf
from clip_ping.tokenizer import get_tokenizer, train_tokenizer

CPU_SIZES = [name for name in MODEL_SPECS if name.startswith("cpu-")]


def test_registry_has_the_promised_sizes():
    names = clip_ping.list_models()
    for required in ("vit-ti-16", "vit-xs-16", "vit-s-16"):
        assert required in names
        assert MODEL_SPECS[required].image_size == 224
    assert CPU_SIZES and all(MODEL_SPECS[n].image_size <= 64 for n in CPU_SIZES)


@pytest.mark.parametrize("name", CPU_SIZES)
def test_cpu_sizes_encode_to_unit_vectors(name):
    model, tokenizer = create_model(name, seed=0)
    size = model.image_size
    images = torch.randn(3, 3, size, size)
    tokens = tokenizer(["a red circle", "two blue squares", ""])
    assert tokens.shape == (3, MODEL_SPECS[name].context_length)
    with torch.no_grad():
        out = model(images, tokens)
    for key in ("image_features", "text_features"):
        assert out[key].shape == (3, MODEL_SPECS[name].embed_dim)
        torch.testing.assert_close(out[key].norm(dim=-1), torch.ones(3))
    assert 0 < out["logit_scale"].item() <= 100


def test_cpu_small_64_matches_the_stated_parameter_count():
    # 64 px, patch 8, width 128, 4+4 layers with the 30,522-token MiniLM vocabulary.
    model, _ = create_model("cpu-small-64")
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(5.56e6, rel=0.01)


def test_text_embedding_ignores_padding_and_pools_at_sep():
    model, tokenizer = create_model("cpu-micro-32", seed=0)
    short = tokenizer(["a red circle"])
    assert short[0, 0] == tokenizer.bos_id and (short[0] == tokenizer.eos_id).sum() == 1
    # Changing what follows [SEP] (normally padding) must not change the embedding:
    # the causal text tower pools at [SEP].
    altered = short.clone()
    sep = (altered[0] == tokenizer.eos_id).nonzero()[0, 0]
    altered[0, sep + 1 :] = tokenizer.unk_id
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(short), model.encode_text(altered))
        different = model.encode_text(tokenizer(["a blue circle"]))
    assert not torch.allclose(model.encode_text(short), different)


def test_logit_scale_is_clamped_at_100():
    model, _ = create_model("cpu-micro-32")
    with torch.no_grad():
        model.clip.logit_scale.fill_(10.0)
    assert model.logit_scale().item() == pytest.approx(100.0)
    model.clamp_logit_scale()
    assert model.clip.logit_scale.item() == pytest.approx(torch.log(torch.tensor(100.0)).item())


def test_tokenizer_truncates_keeping_sep():
    tokenizer = get_tokenizer(context_length=8)
    tokens = tokenizer(["one two three four five six seven eight nine ten"])
    assert tokens.shape == (1, 8)
    assert tokens[0, -1] == tokenizer.eos_id


def test_trained_tokenizer_is_small_and_round_trips(tmp_path):
    captions = [
        f"a {s} {c} {k}"
        for s in ("small", "large")
        for c in ("red", "blue")
        for k in ("circle", "square")
    ]
    tokenizer = train_tokenizer(captions * 10, vocab_size=200, context_length=12)
    assert tokenizer.vocab_size <= 200
    ids = tokenizer(["a small red circle"])[0].tolist()
    assert tokenizer.unk_id not in ids
    tokenizer.save_pretrained(tmp_path)
    reloaded = get_tokenizer(str(tmp_path), context_length=12)
    assert torch.equal(reloaded(["a large blue square"]), tokenizer(["a large blue square"]))
    model, _ = create_model("cpu-micro-32", tokenizer=tokenizer)
    assert model.clip.text_model.embeddings.token_embedding.num_embeddings == tokenizer.vocab_size


def test_hf_export_gives_the_same_embeddings_as_load(tmp_path):
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel, pipeline

    model, tokenizer = create_model("cpu-micro-32", seed=1)
    export_hf(model, tokenizer, tmp_path / "hf")
    ours, preprocess, our_tokenizer = clip_ping.load(tmp_path / "hf")
    theirs = CLIPModel.from_pretrained(tmp_path / "hf").eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    processor = CLIPImageProcessor.from_pretrained(tmp_path / "hf")

    image = Image.new("RGBA", (50, 40), (0, 0, 0, 0))
    image.paste((200, 30, 30, 255), (10, 10, 30, 30))
    captions = ["a red square", "a large green circle at the top"]
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixels[0], preprocess(image), atol=1e-5, rtol=0)
    enc = hf_tokenizer(
        captions, padding="max_length", max_length=tokenizer.context_length, return_tensors="pt"
    )
    assert torch.equal(enc["input_ids"], our_tokenizer(captions))
    with torch.no_grad():
        ref_image = torch.nn.functional.normalize(
            theirs.get_image_features(pixel_values=pixels).pooler_output, dim=-1
        )
        ref_text = torch.nn.functional.normalize(
            theirs.get_text_features(**enc).pooler_output, dim=-1
        )
        torch.testing.assert_close(
            ours.encode_image(preprocess(image)[None], normalize=True), ref_image
        )
        torch.testing.assert_close(
            ours.encode_text(our_tokenizer(captions), normalize=True), ref_text
        )
        torch.testing.assert_close(model.encode_image(pixels, normalize=True), ref_image)

    # The README shows this loading code (the model card runs it on a trained run).
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "\n".join(ClipStudent.transformers_code("logs/shapes/hf")) in readme

    classify = pipeline("zero-shot-image-classification", model=str(tmp_path / "hf"))
    result = classify(image.convert("RGB"), candidate_labels=["red square", "blue circle"])
    assert {r["label"] for r in result} == {"red square", "blue circle"}


def test_load_rejects_a_malicious_pickle(tmp_path):
    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, path)
    with pytest.raises(ValueError, match="could not load checkpoint"):
        clip_ping.load(path)
    assert not (tmp_path / "pwned").exists()


def test_load_names_what_it_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="run directory"):
        clip_ping.load(tmp_path / "nothing-here")
