import pytest
import yaml

from clip_ping.cli import build_parser
from clip_ping.config import TrainConfig, build_config


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
    from clip_ping.schedule import neighbor_ramp, ramp_warning

    assert ramp_warning(10, 10) is None
    message = ramp_warning(40, 10)
    assert "longer than the run (10 steps)" in message
    assert neighbor_ramp(9, 40) == 0.25 and "end at 0.25 of their value" in message
