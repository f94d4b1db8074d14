"""Labelled sequences as padded PyTorch batches: JapaneseVowels (the presets' data) or a user's data set.

The JapaneseVowels `.ts` files come from the `aeon` wheel (a training-only dependency), found on disk
without importing aeon, so no network and no heavy import is needed. Other data comes in through
`seqserve.labelled` (the reader layer shared with the batch job) and `SequenceDataset.from_labelled`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from seqserve.datasets import JAPANESE_VOWELS, japanese_vowels_dir
from seqserve.labelled import LabelledSet, hold_out_rows
from seqserve.ts_format import load_ts

DATASET = JAPANESE_VOWELS


@dataclass(frozen=True)
class SequenceDataset:
    """Variable-length sequences with their targets: class indices (classification) or numbers (regression)."""

    sequences: list[np.ndarray]  # each (T_i, F) float32
    targets: np.ndarray  # (N,) int64 class indices, or (N, K) float32 regression targets
    class_labels: tuple[str, ...] = ()  # classification: the label of each class index
    name: str = DATASET  # the data set's name, recorded in the metadata

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def num_features(self) -> int:
        return self.sequences[0].shape[1]

    @property
    def is_regression(self) -> bool:
        return self.targets.ndim == 2

    @property
    def lengths(self) -> np.ndarray:
        """(N,) int64: the number of steps of every sequence."""
        return np.array([len(s) for s in self.sequences], dtype=np.int64)

    def subset(self, indices: Sequence[int]) -> SequenceDataset:
        return replace(self, sequences=[self.sequences[i] for i in indices], targets=self.targets[list(indices)])

    def feature_stats(self) -> tuple[list[float], list[float]]:
        """Per-feature mean and standard deviation over every real step."""
        steps = np.concatenate(self.sequences, axis=0)  # (sum T_i, F)
        return steps.mean(axis=0).tolist(), (steps.std(axis=0) + 1e-6).tolist()

    def target_stats(self) -> tuple[list[float], list[float]]:
        """Regression: per-target mean and standard deviation (1 for a constant target)."""
        std = self.targets.std(axis=0)  # (K,)
        return self.targets.mean(axis=0).tolist(), np.where(std > 0, std, 1.0).tolist()

    @classmethod
    def from_labelled(cls, data: LabelledSet, name: str, classes: Sequence[str] = ()) -> SequenceDataset:
        """A reader's labelled set, called `name`; class labels become indices into `classes` (default: the
        set's own)."""
        if data.task == "regress":
            targets = np.asarray(data.targets, dtype=np.float32).reshape(len(data.sequences), -1)  # (N, K)
            return cls(list(data.sequences), targets, (), name)
        classes = tuple(classes or data.classes)
        return cls(list(data.sequences), data.label_indices(classes), classes, name)


dataset_dir = japanese_vowels_dir  # where the TRAIN / TEST .ts files are


def load_split(split: str, directory: Path | None = None) -> SequenceDataset:
    """Load the TRAIN or TEST split of JapaneseVowels."""
    path = (directory or dataset_dir()) / f"{DATASET}_{split.upper()}.ts"
    header, cases = load_ts(path)
    index = {label: i for i, label in enumerate(header.class_labels)}
    return SequenceDataset(
        sequences=[c.steps for c in cases],
        targets=np.array([index[str(c.label)] for c in cases], dtype=np.int64),
        class_labels=header.class_labels,
    )


def stratified_split(targets: np.ndarray, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices into (train, validation), taking `fraction` of every class for validation
    (regression targets (N, K): `fraction` of all the sequences, at random); seqserve.labelled's rule."""
    return hold_out_rows(targets if targets.ndim == 1 else len(targets), fraction, seed)


def pad_batch(sequences: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
    """Right-pad sequences with zeros: -> x (B, T_max, F) float32, lengths (B,) int64."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    x = np.zeros((len(sequences), int(lengths.max()), sequences[0].shape[1]), dtype=np.float32)
    for i, s in enumerate(sequences):
        x[i, : len(s)] = s
    return torch.from_numpy(x), torch.from_numpy(lengths)


def random_crop(steps: np.ndarray, min_fraction: float, generator: torch.Generator | None) -> np.ndarray:
    """A random contiguous window of at least `min_fraction` of the sequence: (T, F) -> (T', F)."""
    T = len(steps)
    shortest = max(1, int(np.ceil(min_fraction * T)))
    length = int(torch.randint(shortest, T + 1, (1,), generator=generator))
    start = int(torch.randint(0, T - length + 1, (1,), generator=generator))
    return steps[start : start + length]


def random_stretch(steps: np.ndarray, max_change: float, generator: torch.Generator | None) -> np.ndarray:
    """Resample time by a random factor in [1 - max_change, 1 + max_change]: (T, F) -> (T', F).

    A speaker saying the vowel faster or slower: linear interpolation between neighbouring frames.
    """
    T = len(steps)
    factor = 1.0 + max_change * (2.0 * float(torch.rand((), generator=generator)) - 1.0)
    new_length = max(1, round(T * factor))
    positions = np.linspace(0.0, T - 1, new_length)  # (T',) fractional source frames
    below = np.floor(positions).astype(np.int64)
    above = np.minimum(below + 1, T - 1)
    weight = (positions - below)[:, None].astype(np.float32)  # (T', 1)
    return (1.0 - weight) * steps[below] + weight * steps[above]


def iter_batches(
    data: SequenceDataset, batch_size: int, shuffle: bool, generator: torch.Generator | None = None,
    crop: float = 1.0, stretch: float = 0.0,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yield (x (B, T, F), lengths (B,), targets (B,)) batches.

    crop < 1 takes random windows; stretch > 0 resamples time by random factors (training only).
    """
    order = torch.randperm(len(data), generator=generator).tolist() if shuffle else list(range(len(data)))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        sequences = [data.sequences[i] for i in idx]
        if crop < 1.0:
            sequences = [random_crop(s, crop, generator) for s in sequences]
        if stretch > 0.0:
            sequences = [random_stretch(s, stretch, generator) for s in sequences]
        x, lengths = pad_batch(sequences)
        yield x, lengths, torch.from_numpy(data.targets[idx])
