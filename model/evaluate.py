"""An exported model's score on labelled sequences, run through onnxruntime as the server runs it.

Classifiers are scored by accuracy (argmax of `logits`), regressors by the root mean squared error of
`prediction` in the targets' own units, over every sequence and target. `fit_problem` says why a data
set cannot score a model (other feature count, other classes, other target count) before anything runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from seqserve.contract import Architecture
from seqserve.inference import Batch, OnnxModel, pad

from .data import SequenceDataset

ACCURACY_BATCH = 64  # sequences per onnxruntime call when scoring


@dataclass(frozen=True)
class Score:
    metric: str  # "accuracy" or "rmse"
    value: float
    sequences: int

    @property
    def field(self) -> str:
        """The metadata `training` field it is recorded in: test_accuracy or test_rmse."""
        return f"test_{self.metric}"


def head_output(arch: Architecture) -> str:
    """The output a task is scored on: `prediction` for a regressor, `logits` for a classifier."""
    return "prediction" if arch.regression else "logits"


def predict(
    session: ort.InferenceSession, arch: Architecture, sequences: Sequence[np.ndarray], batch: int = ACCURACY_BATCH,
) -> np.ndarray:
    """Logits (N, C) or predictions (N, K) of every (T_i, F) sequence, `batch` sequences per call, each
    starting from the zero state."""
    model, name = OnnxModel(session, arch), head_output(arch)
    parts = []
    for start in range(0, len(sequences), batch):
        x, lengths = pad(sequences[start : start + batch], arch.input_size)  # (B, T_max, F), (B,)
        parts.append(model.run(Batch(x, lengths), [name])[name])  # (B, C) or (B, K)
    return np.concatenate(parts)  # (N, C) or (N, K)


def accuracy(logits: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of rows of logits (N, C) whose argmax is the target (N,)."""
    return float((logits.argmax(axis=1) == targets).mean())


def rmse(prediction: np.ndarray, targets: np.ndarray) -> float:
    """Root mean squared error of predictions (N, K) against targets (N, K), over every element, in float64."""
    error = prediction.astype(np.float64) - np.asarray(targets, dtype=np.float64).reshape(prediction.shape)
    return float(np.sqrt(np.mean(error**2)))


def fit_problem(arch: Architecture, class_labels: Sequence[str], data: SequenceDataset) -> str | None:
    """Why `data` cannot score a model of `arch` with `class_labels`, or None when it can."""
    if data.num_features != arch.input_size:
        return f"{data.name} has {data.num_features} features, the model takes {arch.input_size}"
    if arch.regression != data.is_regression:
        labelled = "regress" if data.is_regression else "classify"
        return f"{data.name} is labelled for {labelled}, the model does {arch.task}"
    if arch.regression and data.targets.shape[1] != arch.num_targets:
        return f"{data.name} has {data.targets.shape[1]} targets, the model predicts {arch.num_targets}"
    if not arch.regression and list(class_labels) != list(data.class_labels):
        return f"{data.name} has classes {list(data.class_labels)}, the model {list(class_labels)}"
    return None


def score(session: ort.InferenceSession, arch: Architecture, data: SequenceDataset) -> Score:
    """The model's accuracy (classify) or RMSE (regress) on `data`; check `fit_problem` first."""
    out = predict(session, arch, data.sequences)
    if arch.regression:
        return Score("rmse", rmse(out, data.targets), len(data))
    return Score("accuracy", accuracy(out, data.targets), len(data))
