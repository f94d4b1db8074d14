"""model.fit's defaults, chosen from the shape of the training data (no per-data-set tuning).

What the data decides, and why:
- input stage: recurrent layers train poorly over hundreds of steps, and a GRU reading one raw value
  per step sees no local shape, so a series longer than SHORT_SERIES steps goes through a strided 1-D
  convolution first: stride 2, or more so that the longest series gives at most about MAX_FRAMES
  frames; each filter reads at least MIN_KERNEL steps (and twice the stride: windows overlap).
  Measured (seed 0, test accuracy): BasicMotions (100 steps) 0.95 without, 1.00 with stride 2.
- size: a 1-layer bidirectional GRU with additive attention, 64 units per direction; 2 layers once
  there are LARGE_SET training sequences or more (more data supports more capacity).
- batch size: about a tenth of the training sequences, a power of two within [MIN_BATCH, MAX_BATCH]:
  small sets still get several optimizer steps per epoch, large ones do not crawl.
- epochs: enough for about TARGET_STEPS optimizer steps, within [MIN_EPOCHS, MAX_EPOCHS], with early
  stopping on validation loss after a patience of a quarter of them (at least MIN_PATIENCE).
- normalisation: per feature, inside the model (EncoderConfig.feature_mean/std; regression targets too).
- no augmentation beyond small input noise: JapaneseVowels' masking, offset noise and time stretch
  (its presets, model/zoo.py) assume 12 coefficients of speech and harm a single-feature series.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import EncoderConfig, TrainConfig
from .data import SequenceDataset

SHORT_SERIES = 64  # longer series (steps) get the convolutional input stage
MAX_FRAMES = 100  # the recurrent layers see about this many frames of the longest series at most
MIN_KERNEL = 8  # steps each filter of the input stage reads, at least
CONV_CHANNELS = 64
LARGE_SET = 500  # training sequences from which the encoder has 2 layers
HIDDEN_SIZE = 64
MIN_BATCH, MAX_BATCH = 8, 64
TARGET_STEPS = 1500  # optimizer steps a fit aims for
MIN_EPOCHS, MAX_EPOCHS = 40, 300
MIN_PATIENCE = 30
LEARNING_RATE = 3e-3
TIME_LIMIT_SECONDS = 420.0  # training stops after the epoch that passes this; export follows


@dataclass(frozen=True)
class DataShape:
    """What the defaults look at: counts and lengths of the training data."""

    sequences: int
    features: int
    max_length: int
    regression: bool

    @classmethod
    def of(cls, data: SequenceDataset) -> DataShape:
        return cls(len(data), data.num_features, int(data.lengths.max()), data.is_regression)


def conv_stride(max_length: int) -> int:
    """Stride of the input stage that brings the longest series down to about MAX_FRAMES frames."""
    return max(2, math.ceil(max_length / MAX_FRAMES))


def power_of_two_near(value: float) -> int:
    return 2 ** round(math.log2(max(value, 1.0)))


def default_encoder(shape: DataShape) -> EncoderConfig:
    config = EncoderConfig(cell="gru", input_size=shape.features, hidden_size=HIDDEN_SIZE,
                           num_layers=2 if shape.sequences >= LARGE_SET else 1, bidirectional=True,
                           dropout=0.1, attention="additive")
    if shape.max_length > SHORT_SERIES:
        stride = conv_stride(shape.max_length)
        config = config.replace(input_stage="conv", conv_channels=CONV_CHANNELS,
                                conv_kernel=max(MIN_KERNEL, 2 * stride), conv_stride=stride)
    return config


def default_training(shape: DataShape, val_fraction: float) -> TrainConfig:
    train_sequences = max(1, round(shape.sequences * (1 - val_fraction)))
    batch_size = int(np.clip(power_of_two_near(train_sequences / 10), MIN_BATCH, MAX_BATCH))
    steps_per_epoch = math.ceil(train_sequences / batch_size)
    epochs = int(np.clip(math.ceil(TARGET_STEPS / steps_per_epoch), MIN_EPOCHS, MAX_EPOCHS))
    return TrainConfig(epochs=epochs, patience=max(MIN_PATIENCE, epochs // 4), batch_size=batch_size,
                       lr=LEARNING_RATE, input_noise=0.1, label_smoothing=0.0 if shape.regression else 0.1,
                       val_fraction=val_fraction)


def default_configs(data: SequenceDataset, val_fraction: float = TrainConfig.val_fraction,
                    ) -> tuple[EncoderConfig, TrainConfig]:
    """The architecture and training options model.fit uses for `data` unless flags say otherwise."""
    shape = DataShape.of(data)
    return default_encoder(shape), default_training(shape, val_fraction)
