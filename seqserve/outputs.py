"""What a model's outputs are: how each one is laid out over a batch, and the label read from the logits.

The one output-layout table of seqserve (numpy only, so the client uses it without onnxruntime): the
inference core cuts and packs answers by it, the server's batcher scatters rounds by it, the Open
Inference Protocol reshapes answers by it and the client splits packed answers by it.

    PER_STEP      batch (B, T, ...)    packed (sum T_i, ...)   one sequence (T_i, ...)
    PER_STATE     batch (L*D, B, H)    packed (B, L*D, H)      one sequence (L*D, H)
    PER_SEQUENCE  batch (B, ...)       packed (B, ...)         one sequence (...)
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import numpy as np


class Layout(Enum):
    PER_STEP = "per step"
    PER_STATE = "per state"
    PER_SEQUENCE = "per sequence"


OUTPUT_LAYOUT: dict[str, Layout] = {
    "outputs": Layout.PER_STEP,
    "attention": Layout.PER_STEP,
    "step_logits": Layout.PER_STEP,
    "h_n": Layout.PER_STATE,
    "c_n": Layout.PER_STATE,
    "context": Layout.PER_SEQUENCE,
    "logits": Layout.PER_SEQUENCE,
    "probabilities": Layout.PER_SEQUENCE,  # the logits' softmax, added by the inference core
    "prediction": Layout.PER_SEQUENCE,  # (B, K) regression models' answer
}


def layout_of(name: str) -> Layout:
    """How output `name` is laid out; an output the table does not list is one value per sequence."""
    return OUTPUT_LAYOUT.get(name, Layout.PER_SEQUENCE)


def outputs_laid_out(layout: Layout) -> frozenset[str]:
    return frozenset(name for name, its in OUTPUT_LAYOUT.items() if its is layout)


PER_STEP = outputs_laid_out(Layout.PER_STEP)
PER_STATE = outputs_laid_out(Layout.PER_STATE)


def batch_as_packed(name: str, value: np.ndarray) -> np.ndarray:
    """One output of an unpadded batch (every sequence T long) in the packed layout, as a view:
    per step (B, T, ...) -> (B*T, ...), per state (L*D, B, H) -> (B, L*D, H), the rest as it is."""
    layout = layout_of(name)
    if layout is Layout.PER_STEP:
        return value.reshape(-1, *value.shape[2:])  # (B*T, ...)
    if layout is Layout.PER_STATE:
        return value.transpose(1, 0, 2)  # (B, L*D, H)
    return value  # (B, ...)


def label_of(index: int, labels: Sequence[str]) -> str:
    """Class `index`'s name: its label, or the index as text where the labels leave it out."""
    return labels[index] if index < len(labels) else str(index)


def predicted_labels(logits: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Each row's predicted class from logits (B, C): its index (B,) (the argmax) and its name."""
    indices = logits.argmax(axis=1)  # (B,)
    return indices, [label_of(i, labels) for i in indices.tolist()]
