"""The one reference the tests compare answers with: onnxruntime on a model file, in this process, one
padded batch, no seqserve code (padding, zero states, output names and labels come from the file and its
metadata.json), so a defect in the server's or the batch job's inference path cannot hide in it."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "model_repository"
Outputs = dict[str, np.ndarray]


def latest_folder(model: str, repository: Path = REPOSITORY) -> Path:
    """The highest-numbered version folder of `model`."""
    return max((p for p in (repository / model).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


@cache
def session(model_file: Path) -> ort.InferenceSession:
    """One session per file, one intra-op thread (the same numbers whatever the machine)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])


def run_session(runner: ort.InferenceSession, x: np.ndarray, lengths: np.ndarray,
                h0: np.ndarray | None = None, c0: np.ndarray | None = None) -> Outputs:
    """Every output of one run on x (B, T, F) and lengths (B,); a streaming model's h0/c0 (L, B, H) are
    zeros unless given."""
    batch = x.shape[0]
    feeds = {"x": np.asarray(x, dtype=np.float32), "lengths": np.asarray(lengths, dtype=np.int64)}
    given = {"h0": h0, "c0": c0}
    for state in runner.get_inputs()[2:]:  # h0, then c0 for an LSTM
        layers, _, hidden = state.shape
        value = given[state.name]
        feeds[state.name] = (np.zeros((layers, batch, hidden), np.float32) if value is None
                             else np.asarray(value, dtype=np.float32))
    names = [o.name for o in runner.get_outputs()]
    return dict(zip(names, runner.run(names, feeds), strict=True))


def random_sequences(count: int, seed: int = 0, features: int = 12, shortest: int = 1, longest: int = 29,
                     ) -> list[np.ndarray]:
    """`count` sequences (T_i, F) of shortest..longest steps, lengths unsorted, standard normal values."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(shortest, longest + 1, size=count)
    return [rng.standard_normal((int(n), features), dtype=np.float32) for n in lengths]


def padded(sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """x (B, T_max, F) zero-padded and lengths (B,)."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)  # (B,)
    x = np.zeros((len(sequences), max(1, int(lengths.max())), sequences[0].shape[1]), np.float32)  # (B, T, F)
    for i, s in enumerate(sequences):
        x[i, : len(s)] = s
    return x, lengths


def reference_batch(model: str, x: np.ndarray, lengths: np.ndarray, h0: np.ndarray | None = None,
                    c0: np.ndarray | None = None, repository: Path = REPOSITORY) -> Outputs:
    """The latest version of `model` run once on a padded batch."""
    return run_session(session(latest_folder(model, repository) / "model.onnx"), x, lengths, h0, c0)


def reference(model: str, sequences: list[np.ndarray], h0: np.ndarray | None = None,
              c0: np.ndarray | None = None, repository: Path = REPOSITORY) -> Outputs:
    """The latest version of `model` run once on `sequences` (T_i, F) padded into one batch."""
    return reference_batch(model, *padded(sequences), h0, c0, repository)


def class_labels(model: str, repository: Path = REPOSITORY) -> list[str]:
    return json.loads((latest_folder(model, repository) / "metadata.json").read_text())["class_labels"]


def reference_labels(model: str, sequences: list[np.ndarray], repository: Path = REPOSITORY) -> list[str]:
    """Each sequence's label: the class of its largest logit."""
    labels = class_labels(model, repository)
    return [labels[int(i)] for i in reference(model, sequences, repository=repository)["logits"].argmax(axis=1)]
