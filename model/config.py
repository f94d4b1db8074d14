"""Encoder configuration: one dataclass, validated on construction, serialisable to JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from seqserve.contract import Architecture

from .errors import ConfigError

CELLS = ("rnn", "lstm", "gru")
ATTENTIONS = ("additive", "none")

Cell = Literal["rnn", "lstm", "gru"]
Attention = Literal["additive", "none"]

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
    num_classes: size of the classification head.
    step_logits: unidirectional models only — also emit per-step logits, a running prediction.
    class_labels: the label of each class, in logit order.
    feature_mean / feature_std: input normalisation, applied inside the model (raw features go in).
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

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ConfigError(f"cell: unknown cell {self.cell!r}; expected one of {', '.join(CELLS)}")
        if self.attention not in ATTENTIONS:
            raise ConfigError(
                f"attention: unknown attention {self.attention!r}; expected one of {', '.join(ATTENTIONS)}"
            )
        for name in ("input_size", "hidden_size", "num_layers", "attention_size", "num_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: must be a positive integer, got {value!r}")
        for name in ("bidirectional", "step_logits", "attention_query"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: must be true or false, got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.step_logits and self.bidirectional:
            raise ConfigError("step_logits: only unidirectional models can give a running prediction")
        if self.class_labels and len(self.class_labels) != self.num_classes:
            raise ConfigError(
                f"class_labels: {len(self.class_labels)} labels for num_classes={self.num_classes}"
            )
        for name in ("feature_mean", "feature_std"):
            value = getattr(self, name)
            if value and len(value) != self.input_size:
                raise ConfigError(f"{name}: {len(value)} values for input_size={self.input_size}")
        if any(s <= 0 for s in self.feature_std):
            raise ConfigError("feature_std: every value must be > 0")

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def streaming(self) -> bool:
        """A unidirectional model can continue a sequence chunk by chunk from (h0, c0)."""
        return not self.bidirectional

    @property
    def architecture(self) -> Architecture:
        """What the model's I/O contract depends on."""
        return Architecture.from_mapping(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in ("class_labels", "feature_mean", "feature_std"):
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"config: unknown field(s) {', '.join(unknown)}")
        tuples = {k: tuple(d[k]) for k in ("class_labels", "feature_mean", "feature_std") if k in d}
        return cls(**{**d, **tuples})

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
