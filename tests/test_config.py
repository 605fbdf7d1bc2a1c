import dataclasses
import re

import pytest
import yaml

from clip_ping.cli import build_parser
from clip_ping.training.config import TrainConfig, build_config


def parse_train(argv):
    args = build_parser().parse_args(["train", *argv])
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "func", "config")}
    return build_config(args.config, overrides)


def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump({"train-data": "a.csv", "batch_size": 32, "lr": 0.01, "epochs": 3})
    )
    cfg = parse_train(["--config", str(path), "--batch-size", "8", "--gather-with-grad"])
    assert cfg.batch_size == 8  # flag beats YAML
    assert cfg.lr == 0.01 and cfg.epochs == 3  # YAML beats defaults
    assert cfg.wd == TrainConfig.wd  # default kept
    assert cfg.gather_with_grad is True


def test_unknown_yaml_key_is_an_error_with_a_suggestion(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train_data: a.csv\nbatch_sise: 32\n")
    with pytest.raises(ValueError, match="unknown key 'batch_sise'.*batch_size"):
        parse_train(["--config", str(path)])


def test_wrong_types_and_impossible_values_name_the_setting(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train_data: a.csv\nbatch_size: many\n")
    with pytest.raises(ValueError, match="batch_size.*expects int.*'many'"):
        parse_train(["--config", str(path)])
    with pytest.raises(ValueError, match="--batch-size=0"):
        parse_train(["--train-data", "a.csv", "--batch-size", "0"])
    with pytest.raises(ValueError, match="--model='vit-huge'.*cpu-micro-32"):
        parse_train(["--train-data", "a.csv", "--model", "vit-huge"])
    with pytest.raises(ValueError, match="--local-loss.*--gather-with-grad"):
        parse_train(["--train-data", "a.csv", "--local-loss"])
    with pytest.raises(ValueError, match="--train-data.*required"):
        parse_train([])


def test_optional_values_accept_null():
    cfg = parse_train(["--train-data", "a.csv", "--grad-clip-norm", "none", "--csv-separator", ";"])
    assert cfg.grad_clip_norm is None and cfg.csv_separator == ";"


@pytest.mark.parametrize("name", ["cc3m-vit-xs", "cc12m-vit-xs"])
def test_shipped_recipes_are_valid_configs(name, tmp_path):
    from pathlib import Path

    recipe = Path(__file__).parents[1] / "configs" / f"{name}.yaml"
    # The recipe's /data paths do not exist here: point the checked ones at a real folder.
    cfg = parse_train(["--config", str(recipe), "--zeroshot-data", str(tmp_path)])
    assert cfg.model == "vit-xs-16" and cfg.loss == "clip-ping"
    assert cfg.dataset_type == "webdataset" and cfg.precision == "amp_bf16"
    assert cfg.batch_size * 8 == 4096 and cfg.local_loss and cfg.gather_with_grad
    assert cfg.zeroshot_classnames == cfg.zeroshot_templates == "imagenet1k"
    assert cfg.save_every_steps > 0  # checkpoints within epochs, not only at their ends


def test_settings_that_would_do_nothing_are_refused_or_warned():
    common = dict(train_data="train.csv", image_bank="banks/image", text_bank="banks/text")
    with pytest.raises(ValueError, match="no neighbour term is left.*--loss clip"):
        build_config(overrides=dict(common, loss="clip-ping", nn_weight=0.0, xnn_weight=0.0))
    assert build_config(overrides=dict(common, loss="clip-ping")).unused_settings() == []
    # A recipe's banks with --loss clip (a baseline run): warned, not refused.
    baseline = build_config(overrides=dict(common, loss="clip", nn_weight=2.0))
    (warning,) = baseline.unused_settings()
    assert "--image-bank, --text-bank, --nn-weight set, but --loss clip" in warning
    memory = build_config(
        overrides=dict(common, loss="clip-ping", neighbor_target="memory", aux_temperature=0.2)
    )
    assert "memory targets use the CLIP logit scale" in memory.unused_settings()[0]
    no_eval = build_config(overrides=dict(train_data="t.csv", zeroshot_templates="t.txt"))
    assert "--zeroshot-templates set, but there is no --val-data" in no_eval.unused_settings()[0]
    rare = build_config(overrides=dict(train_data="t.csv", val_data="v.csv", val_frequency=3))
    assert "no evaluation during training" in rare.unused_settings()[0]


def test_a_neighbour_warmup_longer_than_the_run_is_warned():
    from clip_ping.training.schedule import neighbor_ramp, ramp_warning

    assert ramp_warning(10, 10) is None
    message = ramp_warning(40, 10)
    assert "longer than the run (10 steps)" in message
    assert neighbor_ramp(9, 40) == 0.25 and "end at 0.25 of their value" in message


def _numeric_fields():
    from clip_ping.flags import field_type

    return [f for f in dataclasses.fields(TrainConfig) if field_type(f.type)[0] in (int, float)]


def test_every_numeric_setting_declares_its_range():
    missing = [f.name for f in _numeric_fields() if "range" not in f.metadata]
    assert not missing, f"give these fields a range=Range(...): {missing}"


# Values the issue tried, and the ends of each range: (flag, value, what the message says).
OUT_OF_RANGE = [
    ("grad_clip_norm", -1.0, "above 0; leave it unset"),  # was gradient ascent
    ("grad_clip_norm", 0.0, "above 0"),
    ("lr", float("inf"), "a finite number above 0"),  # was a checkpoint of inf weights
    ("lr", float("nan"), "a finite number above 0"),
    ("lr", -0.001, "above 0"),
    ("wd", -0.1, "at least 0"),
    ("warmup", -1, "a whole number at least 0"),
    ("epochs", 0, "at least 1"),
    ("batch_size", -4, "at least 1"),
    ("accum_freq", 0, "at least 1"),
    ("workers", -1, "at least 0"),
    ("seed", -5, r"in \[0, 2147483647\]"),  # was an error from numpy naming no flag
    ("seed", 2**32, r"in \[0, 2147483647\]"),
    ("nn_weight", -1.0, "at least 0"),
    ("xnn_weight", float("inf"), "a finite number at least 0"),
    ("neighbor_k", 0, "at least 1"),
    ("aux_temperature", 0.0, r"in \[0.001, 10\]"),
    ("aux_temperature", 1e-9, r"in \[0.001, 10\]"),
    ("neighbor_warmup", -3, "at least 0"),
    ("beta1", 1.0, r"in \[0, 1\)"),
    ("beta2", -0.5, r"in \[0, 1\)"),
    ("eps", 0.0, "above 0"),
    ("max_bad_share", 1.0, r"in \[0, 1\); a fraction"),
    ("train_num_samples", 0, "at least 1"),
    ("log_every_steps", 0, "at least 1"),
    ("save_every_steps", -1, "at least 0"),
    ("save_frequency", -1, "at least 0"),
    ("val_frequency", -2, "at least 0"),
    ("stop_after_steps", 0, "at least 1"),
]


@pytest.mark.parametrize("name,value,allowed", OUT_OF_RANGE)
def test_out_of_range_numbers_are_refused_from_flags_and_yaml_alike(name, value, allowed, tmp_path):
    flag = "--" + name.replace("_", "-")
    shown = re.escape(repr(value))
    expected = rf"^{flag}={shown} is out of range: must be .*{allowed}"
    with pytest.raises(ValueError, match=expected):
        parse_train(["--train-data", "a.csv", flag, str(value)])
    path = tmp_path / "run.yaml"
    text = {float("inf"): ".inf", float("nan"): ".nan"}.get(value, str(value))
    path.write_text(f"train_data: a.csv\n{name}: {text}\n")
    with pytest.raises(ValueError, match=expected):
        parse_train(["--config", str(path)])
    with pytest.raises(ValueError, match=expected):
        build_config(overrides={"train_data": "a.csv", name: value})


def test_the_ends_of_each_range_are_accepted():
    cfg = parse_train(
        [
            "--train-data",
            "a.csv",
            "--seed",
            str(2**31 - 1),
            "--beta1",
            "0",
            "--wd",
            "0",
            "--aux-temperature",
            "0.001",
            "--max-bad-share",
            "0",
            "--warmup",
            "0",
            "--workers",
            "0",
            "--grad-clip-norm",
            "1e-6",
        ]
    )
    assert cfg.seed == 2**31 - 1 and cfg.aux_temperature == 0.001 and cfg.grad_clip_norm == 1e-6
