"""A user's mistake on any command is one line naming the value or file and the fix, exit
status 2: never "internal error ... (a bug)". Each case runs the real command (``main``) on
real files."""

import json

import numpy as np
import pytest

from clip_ping.bank.mine import mine_neighbors
from clip_ping.cli import main
from clip_ping.data.shapes import build_shapes
from clip_ping.models import create_model, export_hf


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A small shapes corpus and an exported student."""
    root = tmp_path_factory.mktemp("mistakes")
    build_shapes(root / "d", num_train=40, num_val=24, image_size=16, seed=0)
    model, tokenizer = create_model("cpu-micro-32", seed=0)
    export_hf(model, tokenizer, root / "hf")
    return root


def _fails(capsys, argv, *named) -> str:
    """Run ``clip-ping argv``; assert exit status 2 and one error line naming ``named``."""
    status = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2, err
    assert err[-1].startswith("clip-ping: error: ") and "internal error" not in err[-1]
    for part in named:
        assert str(part) in err[-1], err[-1]
    return err[-1]


@pytest.mark.parametrize("separator", ["", ";;", "\\x"])
def test_a_separator_of_other_than_one_character_on_every_command(made, capsys, separator):
    data = made / "d" / "train.csv"
    shown = f"--csv-separator {separator!r}"
    _fails(capsys, ["train", "--train-data", data, "--csv-separator", separator], shown)
    bank = ["bank", "build", "--train-data", data, "--modality", "text", "--out", made / "b"]
    _fails(capsys, [*bank, "--csv-separator", separator], shown)
    evaluate = ["eval", "--model", made / "hf", "--task", "retrieval", "--dataset", data]
    _fails(capsys, [*evaluate, "--csv-separator", separator], shown)
    config = made / "run.yaml"
    config.write_text(f"train-data: {data}\ncsv-separator: {json.dumps(separator)}\n")
    _fails(capsys, ["train", "--config", config], shown)


def test_bad_templates_and_class_names_name_the_file(made, capsys):
    evaluate = ["eval", "--model", made / "hf", "--task", "zeroshot"]
    evaluate += ["--dataset", made / "d" / "val.csv"]
    templates = made / "two.txt"
    templates.write_text("a photo of a {}\na {} next to a {}\n")
    _fails(capsys, [*evaluate, "--templates", templates], templates, "'a {} next to a {}'")
    names = made / "blank.txt"
    names.write_text("circle\n\nsquare\ntriangle\n\n")  # a blank line shifts every later class
    _fails(capsys, [*evaluate, "--classnames", names], f"{names}, line 2: a blank line")
    names.write_bytes("circle\nsquare\ntri\u00e1ngle\n".encode("cp1252"))
    _fails(capsys, [*evaluate, "--classnames", names], f"{names}, line 3: byte 0xe1")


def test_a_damaged_export_or_feature_cache_names_the_file(made, capsys, tmp_path):
    evaluate = ["eval", "--task", "linear-probe", "--dataset", made / "d" / "val.csv"]
    evaluate += ["--train-dataset", made / "d" / "val.csv", "--model", made / "hf"]
    for content in (b"", b"not a cache"):
        cache = tmp_path / "cache.pt"
        cache.write_bytes(content)
        _fails(capsys, [*evaluate, "--feature-cache", cache], f"{cache} is not a feature cache")
        assert cache.read_bytes() == content  # the user's file is never overwritten
    hf = tmp_path / "hf"
    export_hf(*create_model("cpu-micro-32", seed=0), hf)
    weights = hf / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    evaluate = ["eval", "--task", "retrieval", "--dataset", made / "d" / "val.csv"]
    _fails(capsys, [*evaluate, "--model", hf], f"the export {hf} is damaged")


def test_a_karpathy_file_of_another_shape_names_the_file(made, capsys, tmp_path):
    command = ["data", "karpathy", "--images", tmp_path, "--out", tmp_path / "o.csv"]
    for content in ("[1, 2]", '{"images": [3]}', '{"images": [{"split": "test"', "\u00e9"):
        path = tmp_path / "karpathy.json"
        path.write_bytes(content.encode("latin-1"))
        _fails(capsys, [*command, "--json", path], path, "dataset_flickr30k.json")


def test_more_ivf_lists_than_rows_is_refused_naming_both():
    features = np.eye(200, 8, dtype=np.float16)
    with pytest.raises(ValueError, match="--nlist 1000 exceeds the bank's 200 rows"):
        mine_neighbors(features, 5, backend="faiss-ivf", nlist=1000, progress=False)


def test_a_damaged_result_json_names_its_file(tmp_path):
    from clip_ping.evaluation.run import result_records

    results = tmp_path / "results"
    results.mkdir()
    for content, what in (('{"step": 3, "metr', "is not valid JSON"), ("[1]", "holds a JSON list")):
        (results / "zeroshot.json").write_text(content)
        with pytest.raises(ValueError, match=rf"zeroshot\.json {what}.*; delete it or rerun"):
            result_records(tmp_path)
