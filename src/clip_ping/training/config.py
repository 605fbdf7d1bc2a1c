"""Typed training configuration: defaults < YAML ``--config`` < command-line flags.

One :class:`TrainConfig` is built and validated once, saved beside the run as
``config.yaml``, and passed read-only to the loop. Every field is a flag: ``batch_size``
is ``--batch-size`` (open_clip's names where it has one). Unknown YAML keys and values of
the wrong type are errors that name the key and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data.loader import DataSpec
from ..errors import UserError, short_repr
from ..flags import SEED_RANGE, Range, check_ranges, field_type, flag_name
from ..guidance import SELF_TARGETS, SOURCES
from ..losses import TERMS, method_terms, methods
from ..losses.added import DECAYS
from ..losses.neighbor import TARGET_MODES
from ..workers import check_workers
from .config_file import read_config_file

PRECISIONS = ("fp32", "amp", "amp_bf16")

# --resume: the settings a resumed run may change (each change is recorded in the run's
# resumes.jsonl). They decide how the run is fed, watched, stored or stopped, not what it
# learns; but with WebDataset shards --workers decides the order of the samples, so there it
# must stay. --epochs may only grow: the run goes on longer, and the cosine schedule stretches
# from the resumed step. Every other setting must keep its value (checkpoint.check_resumable);
# name, logs and resume say where the run is, not what it is.
RESUME_MAY_CHANGE = (
    "workers",
    "device",
    "torch_compile",
    "progress",
    "log_every_steps",
    "val_frequency",
    "save_every_steps",
    "save_frequency",
    "stop_after_steps",
    "skip_nonfinite",
    "on_bad_sample",
    "max_bad_share",
)
RESUME_MAY_GROW = ("epochs",)
RUN_LOCATION = ("name", "logs", "resume")


def _f(default: Any, help: str, group: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, "group": group, **kw})


def _data(name: str) -> Any:
    """A training-data field with DataSpec's default and help."""
    spec_field = {f.name: f for f in dataclasses.fields(DataSpec)}[name]
    return field(default=spec_field.default, metadata=spec_field.metadata)


@dataclass
class TrainConfig:
    # data (the training data's flags come from DataSpec, their one source)
    train_data: str | None = _data("train_data")
    val_data: str | None = _f(
        None, "held-out image-caption CSV: retrieval (and zero-shot if labelled) each eval", "data"
    )
    dataset_type: str = _data("dataset_type")
    csv_img_key: str = _data("csv_img_key")
    csv_caption_key: str = _data("csv_caption_key")
    csv_separator: str | None = _data("csv_separator")
    train_num_samples: int | None = _data("train_num_samples")
    dataset_resampled: bool = _data("dataset_resampled")
    zeroshot_data: str | None = _f(
        None,
        "zero-shot eval set: labelled CSV, class folder, or built-in digits | mnist5k "
        "(default: --val-data if it has a label column)",
        "data",
    )
    zeroshot_classnames: str | None = _f(
        None, "class names file for zero-shot eval (default: classnames.txt beside the CSV)", "data"
    )
    zeroshot_templates: str | None = _f(None, "prompt templates file (default: beside it)", "data")
    workers: int = _f(
        2,
        "data loader workers per process (at most what the machine can run)",
        "data",
        range=Range(0),
    )
    on_bad_sample: str = _data("on_bad_sample")
    max_bad_share: float = _data("max_bad_share")
    # model
    model: str = _f("cpu-small-64", "student size (clip_ping.list_models())", "model")
    tokenizer: str | None = _f(None, "tokenizer folder or 'minilm' (default)", "model")
    torch_compile: bool = _f(False, "torch.compile the model (opt-in)", "model")
    aug_scale_min: float = _f(
        0.9,
        "random resized crop: smallest share of the image's area kept",
        "model",
        range=Range(0, 1, min_open=True, hint="1.0 turns the crop off"),
    )
    # optimiser and schedule
    batch_size: int = _f(64, "batch size per process", "optimiser", range=Range(1))
    epochs: int = _f(1, "passes over the training data", "optimiser", range=Range(1))
    lr: float = _f(5e-4, "peak learning rate", "optimiser", range=Range(0, min_open=True))
    wd: float = _f(
        0.1,
        "AdamW weight decay (not applied to gains, biases, logit scale)",
        "optimiser",
        range=Range(0),
    )
    beta1: float = _f(0.9, "AdamW beta1", "optimiser", range=Range(0, 1, max_open=True))
    beta2: float = _f(0.98, "AdamW beta2", "optimiser", range=Range(0, 1, max_open=True))
    eps: float = _f(1e-6, "AdamW epsilon", "optimiser", range=Range(0, min_open=True))
    warmup: int = _f(
        100, "linear warm-up steps before the cosine decay", "optimiser", range=Range(0)
    )
    accum_freq: int = _f(
        1, "micro-batches accumulated per optimiser step", "optimiser", range=Range(1)
    )
    grad_clip_norm: float | None = _f(
        None,
        "clip gradient norm at this value",
        "optimiser",
        range=Range(0, min_open=True, hint="leave it unset (or none) for no clipping"),
    )
    skip_nonfinite: bool = _f(
        False, "skip (and count) steps with a NaN/inf loss instead of stopping", "optimiser"
    )
    precision: str = _f(
        "fp32",
        "fp32 | amp (fp16 autocast, CUDA) | amp_bf16 (bf16 autocast)",
        "optimiser",
        choices=PRECISIONS,
    )
    # loss
    # The choices are the methods the loss terms belong to (clip_ping.losses); each term
    # declares the settings below that it reads.
    loss: str = _f(
        "clip",
        "the objective (docs/method.md); all but clip need the banks",
        "loss",
        choices=methods(),
    )
    image_bank: str | None = _f(None, "image feature bank folder with neighbours", "loss")
    text_bank: str | None = _f(None, "text feature bank folder with neighbours", "loss")
    nn_weight: float = _f(
        1.0, "lambda_NN: weight of the intra-modal neighbour terms", "loss", range=Range(0)
    )
    xnn_weight: float = _f(
        1.0, "lambda_XNN: weight of the cross-modal neighbour terms", "loss", range=Range(0)
    )
    fd_weight: float = _f(
        1.0, "lambda_FD: weight of the feature regression (fd, distill-fd)", "loss", range=Range(0)
    )
    rel_weight: float = _f(
        1.0, "lambda_R: weight of the relational KL terms (relational)", "loss", range=Range(0)
    )
    rel_temperature: float = _f(
        0.05,
        "teachers' temperature of the relational similarity distributions",
        "loss",
        range=Range(0.001, 10),
    )
    neighbor_k: int = _f(5, "draw each step's neighbour among the top K", "loss", range=Range(1))
    neighbor_weight: float = _f(
        0.5,
        "lambda_nbr: weight of the neighbour terms added to distillation (distill-nn)",
        "loss",
        range=Range(0),
    )
    neighbor_decay: str = _f(
        "linear",
        "how the added neighbour weight falls over the run: linear | cosine | none (distill-nn)",
        "loss",
        choices=DECAYS,
    )
    neighbor_target: str = _f(
        "bank", "bank (teacher features) | memory (student)", "loss", choices=TARGET_MODES
    )
    neighbor_source: str = _f(
        "offline",
        "offline (precomputed tables) | active (teachers on the batch)",
        "loss",
        choices=SOURCES,
    )
    neighbor_self: str = _f(
        "exclude",
        "exclude (neighbours only) | only (each anchor's own teacher features: distillation "
        "without neighbours, a control) | include (the anchor drawn beside its top K)",
        "loss",
        choices=SELF_TARGETS,
    )
    # Logits are cosines / tau: at 0.001 they reach ±1000, past any useful sharpness and on
    # the way to half-precision overflow; above 10 the softmax is nearly flat.
    aux_temperature: float = _f(
        0.1, "temperature of bank-mode neighbour logits", "loss", range=Range(0.001, 10)
    )
    neighbor_warmup: int = _f(
        0, "ramp the neighbour weights up over N steps", "loss", range=Range(0)
    )
    # distributed
    local_loss: bool = _f(
        False, "contrast local features against the gathered batch", "distributed"
    )
    gather_with_grad: bool = _f(False, "all-gather features with gradient", "distributed")
    # run
    name: str | None = _f(None, "run name: logs/<name>/ (default: date and time)", "run")
    # --logs-dir is the spelling that works after torchrun, whose parser takes --logs as an
    # ambiguous abbreviation of its own --logs-specs.
    logs: str = _f("logs", "folder holding run folders", "run", aliases=("--logs-dir",))
    seed: int = _f(0, "random seed (init, data order, augmentation)", "run", range=SEED_RANGE)
    device: str = _f("auto", "auto | cpu | cuda | cuda:N", "run")
    resume: str | None = _f(None, "'latest' or a checkpoint path to continue from", "run")
    save_frequency: int = _f(
        1, "keep checkpoints/epoch_N.pt every N epochs (0: never)", "run", range=Range(0)
    )
    save_every_steps: int = _f(
        200, "write checkpoints/latest.pt every N steps (0: end only)", "run", range=Range(0)
    )
    log_every_steps: int = _f(10, "log train/* metrics every N steps", "run", range=Range(1))
    val_frequency: int = _f(
        1,
        "evaluate on --val-data / --zeroshot-data every N epochs (0: never)",
        "run",
        range=Range(0),
    )
    stop_after_steps: int | None = _f(
        None,
        "stop after this many optimiser steps as if interrupted (for tests)",
        "run",
        range=Range(1),
    )
    progress: bool = _f(True, "show a progress bar", "run")

    def validate(self) -> TrainConfig:
        """Raise ``ValueError`` naming the bad value and the fix; return self."""

        def bad(name: str, why: str) -> None:
            raise UserError(f"{flag_name(name)}={short_repr(getattr(self, name))}: {why}")

        check_ranges(self)  # every field's declared range or choices
        check_workers(self.workers)
        if not self.train_data:
            bad("train_data", "required; pass a CSV/TSV file or WebDataset shards")
        for term in method_terms(self.loss):
            term.check_config(self)
        if self.local_loss and not self.gather_with_grad:
            bad("local_loss", "needs --gather-with-grad (local logits need gathered gradients)")
        from ..models import list_models

        if self.model not in list_models():
            bad("model", f"choose one of {', '.join(list_models())}")
        from ..evaluation.datasets import builtin_datasets

        builtins = builtin_datasets()
        if self.zeroshot_data and self.zeroshot_data not in builtins:
            if not Path(self.zeroshot_data).exists():  # fail now, not after the first epoch
                bad("zeroshot_data", f"no such file or folder, nor a built-in ({builtins})")
        return self

    def unused_settings(self) -> list[str]:
        """A warning for each setting given a non-default value that this run never uses."""
        defaults = TrainConfig(train_data=self.train_data)
        changed = [
            f.name
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(defaults, f.name)
        ]
        flags = lambda names: ", ".join("--" + n.replace("_", "-") for n in names)  # noqa: E731
        warnings = []
        read = {key for term in method_terms(self.loss) for key, _ in term.settings}
        others = {key for term in TERMS.values() for key, _ in term.settings} - read
        from ..models.registry import LOCKED_SPECS

        if self.model in LOCKED_SPECS:  # it trains on the banks' rows
            others -= {"image_bank", "text_bank"}
        if unused := [name for name in changed if name in others]:
            warnings.append(
                f"{flags(unused)} set, but --loss {self.loss} does not use them: ignored"
            )
        for term in method_terms(self.loss):
            warnings += term.warnings(self, set(changed))
        if not (self.val_data or self.zeroshot_data):
            unused = [n for n in changed if n in ("zeroshot_classnames", "zeroshot_templates")]
            if unused:
                warnings.append(
                    f"{flags(unused)} set, but there is no --val-data or --zeroshot-data: ignored"
                )
        elif self.val_frequency > self.epochs:
            warnings.append(
                f"--val-frequency {self.val_frequency} exceeds --epochs {self.epochs}: no "
                "evaluation during training (use --val-frequency 1, or 0 to say so)"
            )
        return warnings

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def data_spec(self) -> DataSpec:
        """The training data's :class:`~clip_ping.data.loader.DataSpec` (same field names)."""
        return DataSpec(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DataSpec)})


# --------------------------------------------------------------------------------------
# YAML + flags
# --------------------------------------------------------------------------------------


def _coerce(name: str, value: Any, annotation: Any, where: str = "") -> Any:
    """``value`` from a YAML file as the field's type; ``where`` starts an error message."""
    kind, optional = field_type(annotation)
    if optional and isinstance(value, str) and value.lower() in ("none", "null"):
        value = None
    if value is None:
        if optional:
            return None
        raise UserError(f"{where}config key '{name}' cannot be null")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif kind is int and not isinstance(value, bool):
        if isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit()):
            return int(value)
    elif kind is float and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):
            pass
    elif kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise UserError(
        f"{where}config key '{name}' expects {kind.__name__}{' or null' if optional else ''}, "
        f"got {short_repr(value)} ({type(value).__name__})"
    )


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def load_yaml(path: str | Path, cls: type = TrainConfig) -> dict[str, Any]:
    """Read a YAML mapping of config keys (``batch_size`` or ``batch-size``), strictly
    (:mod:`clip_ping.training.config_file`), each value as its field's type."""
    fields = _fields(cls)
    values = {}
    for raw_key, (value, line) in read_config_file(path).items():
        key, where = raw_key.replace("-", "_"), f"--config {path}, line {line}: "
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UserError(f"{where}unknown key {short_repr(raw_key)}{hint}")
        values[key] = _coerce(key, value, fields[key].type, where)
    return values


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    """``value`` if it has the field's type (an int passes for a float), else an error."""
    kind, optional = field_type(annotation)
    if value is None and optional:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise UserError(
        f"setting '{name}' expects {kind.__name__}{' or None' if optional else ''}, "
        f"got {short_repr(value)} ({type(value).__name__})"
    )


def build_config(
    config_file: str | None = None, overrides: dict[str, Any] | None = None, cls: type = TrainConfig
):
    """Defaults, then the YAML file, then ``overrides`` (typed values: parsed flags or
    Python); validated."""
    values: dict[str, Any] = {}
    if config_file:
        values.update(load_yaml(config_file, cls))
    fields = _fields(cls)
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise ValueError(f"unknown setting '{key}'")
        values[key] = _check_type(key, value, fields[key].type)
    return cls(**values).validate()


def save_yaml(config: Any, path: str | Path) -> None:
    from ..io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
