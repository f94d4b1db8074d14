"""Encoder configuration: one dataclass, validated on construction, serialisable to JSON."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from seqserve.contract import Architecture

from .errors import ConfigError

CELLS = ("rnn", "lstm", "gru")
ATTENTIONS = ("additive", "none")
TASKS = ("classify", "regress")
INPUT_STAGES = ("none", "conv")
STATISTICS = ("class_labels", "feature_mean", "feature_std", "target_mean", "target_std")  # tuples, lists in JSON
CONV_FIELDS = ("conv_channels", "conv_kernel", "conv_stride")  # meaningful only with input_stage="conv"

Cell = Literal["rnn", "lstm", "gru"]
Attention = Literal["additive", "none"]
Task = Literal["classify", "regress"]
InputStage = Literal["none", "conv"]


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of a `RecurrentEncoder`.

    cell: recurrent cell, one of rnn | lstm | gru.
    input_size: features per time step (F).
    hidden_size: hidden units per direction (H).
    num_layers: stacked recurrent layers (L).
    bidirectional: run a backward direction too (D = 2) or not (D = 1).
    dropout: dropout between recurrent layers and before the head (training only).
    attention: `additive` (Bahdanau) pooling over time, or `none` (final hidden states).
    attention_size: width of the additive attention's hidden projection.
    attention_query: score steps against the last layer's final states (W2 q), or by themselves.
    num_classes: size of the classification head (classify; a regression config records 0).
    step_logits: streaming classifiers only — also emit per-step logits, a running prediction.
    class_labels: the label of each class, in logit order (classify only).
    feature_mean / feature_std: input normalisation, applied inside the model (raw features go in).
    task: `classify` (sequence -> class logits) or `regress` (sequence -> num_targets numbers).
    num_targets: regress only — numbers predicted per sequence (K).
    target_mean / target_std: regress only — the head predicts standardised targets z, the model
        outputs `prediction = z * target_std + target_mean` in the target's own units (empty: 0 and 1).
    input_stage: `none`, or `conv`: a strided 1-D convolution + ReLU over time before the recurrent
        layers (for long series): conv_channels filters of conv_kernel steps, every conv_stride steps,
        so a row of length n gives ceil(n / conv_stride) frames. Padding never reaches a real frame.
        A conv model is not streaming (it takes no initial state), whatever its direction.
    """

    cell: Cell = "lstm"
    input_size: int = 12
    hidden_size: int = 64
    num_layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.0
    attention: Attention = "additive"
    attention_size: int = 64
    attention_query: bool = True
    num_classes: int = 9
    step_logits: bool = False
    class_labels: tuple[str, ...] = ()
    feature_mean: tuple[float, ...] = ()
    feature_std: tuple[float, ...] = ()
    task: Task = "classify"
    num_targets: int = 0
    target_mean: tuple[float, ...] = ()
    target_std: tuple[float, ...] = ()
    input_stage: InputStage = "none"
    conv_channels: int = 64
    conv_kernel: int = 8
    conv_stride: int = 4

    def __post_init__(self) -> None:
        for name in STATISTICS:  # lists (JSON) and None (absent) are accepted and stored as tuples
            value = getattr(self, name)
            object.__setattr__(self, name, tuple(value) if value is not None else ())
        if self.task == "regress":
            object.__setattr__(self, "num_classes", 0)  # a regressor has no classes, whatever the default said
        self._check_choices()
        self._check_sizes()
        self._check_task()
        self._check_statistics()

    def _check_choices(self) -> None:
        for name, value, choices in (("cell", self.cell, CELLS), ("attention", self.attention, ATTENTIONS),
                                     ("task", self.task, TASKS), ("input_stage", self.input_stage, INPUT_STAGES)):
            if value not in choices:
                raise ConfigError(f"{name}: unknown {name} {value!r}; expected one of {', '.join(choices)}")
        for name in ("bidirectional", "step_logits", "attention_query"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: must be true or false, got {getattr(self, name)!r}")

    def _check_sizes(self) -> None:
        for name in ("input_size", "hidden_size", "num_layers", "attention_size", *CONV_FIELDS):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}: must be a positive integer, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.conv_kernel < self.conv_stride:
            raise ConfigError(f"conv_kernel: must be at least conv_stride ({self.conv_stride}), got "
                              f"{self.conv_kernel}: the steps between two windows would never be read")

    def _check_task(self) -> None:
        count, other = ("num_classes", "num_targets") if self.task == "classify" else ("num_targets", "num_classes")
        value = getattr(self, count)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{count}: a {self.task} model needs a positive integer, got {value!r}")
        if self.task == "classify" and self.num_targets != 0:
            raise ConfigError(f"{other}: only regress models have targets, got {self.num_targets!r}")
        if self.task == "regress":
            for name in ("class_labels", "step_logits"):
                if getattr(self, name):
                    raise ConfigError(f"{name}: only classify models have it")
        if self.step_logits and not self.streaming:
            raise ConfigError("step_logits: only streaming models (unidirectional, no input stage) can give a "
                              "running prediction")

    def _check_statistics(self) -> None:
        if self.class_labels and len(self.class_labels) != self.num_classes:
            raise ConfigError(
                f"class_labels: {len(self.class_labels)} labels for num_classes={self.num_classes}"
            )
        if self.task == "classify" and (self.target_mean or self.target_std):
            raise ConfigError("target_mean: only regress models have target statistics")
        for name, size, size_name in (("feature_mean", self.input_size, "input_size"),
                                      ("feature_std", self.input_size, "input_size"),
                                      ("target_mean", self.num_targets, "num_targets"),
                                      ("target_std", self.num_targets, "num_targets")):
            value = getattr(self, name)
            if value and len(value) != size:
                raise ConfigError(f"{name}: {len(value)} values for {size_name}={size}")
            if not all(math.isfinite(v) for v in value):
                raise ConfigError(f"{name}: every value must be a finite number")
        for name in ("feature_std", "target_std"):
            if any(s <= 0 for s in getattr(self, name)):
                raise ConfigError(f"{name}: every value must be > 0")

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def streaming(self) -> bool:
        """A unidirectional model without an input stage can continue a sequence chunk by chunk from (h0, c0)."""
        return self.architecture.streaming

    @property
    def labels(self) -> tuple[str, ...]:
        """The class labels, or the class indices as text when none were given; () for a regressor."""
        return self.class_labels or tuple(str(i) for i in range(self.num_classes))

    @property
    def num_outputs(self) -> int:
        """Width of the head: classes (classify) or targets (regress)."""
        return self.num_classes if self.task == "classify" else self.num_targets

    @property
    def architecture(self) -> Architecture:
        """What the model's I/O contract depends on (no stride without an input stage)."""
        d = self.to_dict()
        if self.input_stage == "none":
            d = {k: v for k, v in d.items() if k not in CONV_FIELDS}
        return Architecture.from_mapping(d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in STATISTICS:
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"config: unknown field(s) {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> EncoderConfig:
        return EncoderConfig.from_dict({**self.to_dict(), **changes})


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 80
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-2
    input_noise: float = 0.1  # Gaussian noise added to training inputs, in units of each feature's std
    label_smoothing: float = 0.1
    crop: float = 1.0  # train on random windows of at least this fraction of each sequence
    mixup: float = 0.0  # manifold mixup of the summaries the head reads: Beta(mixup, mixup) weights; 0 = off
    offset_noise: float = 0.0  # Gaussian shift of each training sequence, constant over time, in feature stds
    feature_mask: float = 0.0  # probability of blanking each feature (to its mean) for a whole training sequence
    stretch: float = 0.0  # resample training sequences in time by a random factor within 1 ± stretch
    ema: float = 0.0  # decay of an exponential moving average of the weights, evaluated and kept; 0 = off
    grad_clip: float = 1.0
    val_fraction: float = 0.15
    patience: int = 25  # early stopping after this many epochs without a better validation loss
    keep: str = "best"  # which checkpoint to keep: "best" validation loss, or "last" epoch
    seed: int = 0
    threads: int = 1  # one thread: the same result whatever the core count, and no stalls when the cores
    # are shared (two threads on a busy 2-core machine ran a 60-epoch preset 30x slower than one)
