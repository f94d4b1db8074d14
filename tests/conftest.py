"""Shared fixtures for the model / export / repository tests.

Models are tiny (H = 16) so the whole suite runs in well under a few minutes on 2 cores.
Exported ONNX files are cached for the session: export each architecture once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from seqserve.contract import input_names, output_names  # noqa: E402
from seqserve.model.checkpoint import save_checkpoint  # noqa: E402
from seqserve.model.config import EncoderConfig  # noqa: E402
from seqserve.model.encoder import RecurrentEncoder  # noqa: E402
from seqserve.model.onnx_export import export_onnx  # noqa: E402
from seqserve.model.parity import make_session  # noqa: E402

CELLS = ("rnn", "lstm", "gru")
F = 5  # features
H = 16  # hidden units per direction
C = 4  # classes
LABELS = ("a", "b", "c", "d")


def make_config(
    cell: str = "lstm",
    layers: int = 1,
    bidirectional: bool = True,
    attention: str = "additive",
    step_logits: bool = False,
    **changes,
) -> EncoderConfig:
    """A small config with non-trivial normalisation statistics (so that path is exercised)."""
    base = dict(
        cell=cell,
        input_size=F,
        hidden_size=H,
        num_layers=layers,
        bidirectional=bidirectional,
        attention=attention,
        attention_size=8,
        num_classes=C,
        step_logits=step_logits,
        class_labels=LABELS,
        feature_mean=tuple(np.linspace(-1.0, 2.0, F).tolist()),
        feature_std=tuple(np.linspace(0.5, 3.0, F).tolist()),
    )
    base.update(changes)
    return EncoderConfig(**base)


def make_model(seed: int = 0, **config) -> RecurrentEncoder:
    torch.manual_seed(seed)
    return RecurrentEncoder(make_config(**config)).eval()


def random_batch(
    model: RecurrentEncoder, lengths, time: int | None = None, seed: int = 0, pad_value: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (B, T, F), lengths (B,)) at the model's raw scale; padding holds noise unless pad_value is given.

    Noise on the padding proves the model never reads it.
    """
    cfg = model.config
    lengths = torch.tensor(list(lengths), dtype=torch.int64)
    T = time if time is not None else max(1, int(lengths.max()))
    g = torch.Generator().manual_seed(seed)
    mean = torch.tensor(cfg.feature_mean or [0.0] * cfg.input_size)
    std = torch.tensor(cfg.feature_std or [1.0] * cfg.input_size)
    x = mean + std * torch.randn(len(lengths), T, cfg.input_size, generator=g)  # (B, T, F)
    if pad_value is not None:
        pad = torch.arange(T).unsqueeze(0) >= lengths.unsqueeze(1)  # (B, T)
        x[pad] = pad_value
    return x, lengths


def random_state(model: RecurrentEncoder, batch: int, seed: int = 0, scale: float = 0.5):
    """A random (h0, c0) for a streaming model; c0 is None unless LSTM."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    shape = (cfg.num_layers * cfg.num_directions, batch, cfg.hidden_size)
    h0 = scale * torch.randn(shape, generator=g)
    c0 = scale * torch.randn(shape, generator=g) if cfg.cell == "lstm" else None
    return h0, c0


def torch_outputs(model: RecurrentEncoder, *args) -> dict[str, np.ndarray]:
    with torch.no_grad():
        return {k: v.numpy() for k, v in model(*args).as_dict().items()}


def ort_run(session, model: RecurrentEncoder, x, lengths, h0=None, c0=None) -> dict[str, np.ndarray]:
    """Run an exported model; zero state when a streaming model gets no (h0, c0)."""
    arch = model.config.architecture
    feeds = {"x": np.asarray(x, dtype=np.float32), "lengths": np.asarray(lengths, dtype=np.int64)}
    if arch.streaming:
        if h0 is None:
            zh, zc = model.initial_state(feeds["x"].shape[0])
            h0, c0 = zh, zc
        feeds["h0"] = np.asarray(h0, dtype=np.float32)
        if arch.has_cell_state:
            feeds["c0"] = np.asarray(c0, dtype=np.float32)
    assert sorted(feeds) == sorted(input_names(arch))
    names = output_names(arch)
    return dict(zip(names, session.run(names, feeds)))


class Exported:
    def __init__(self, model: RecurrentEncoder, path: Path) -> None:
        self.model = model
        self.path = path
        self._session = None

    @property
    def session(self):
        if self._session is None:
            self._session = make_session(self.path)
        return self._session


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Callable[..., Exported]:
    """exported(cell=..., layers=..., ...) -> Exported, each architecture exported once per session."""
    cache: dict[tuple, Exported] = {}
    folder = tmp_path_factory.mktemp("onnx")

    def get(**config) -> Exported:
        key = tuple(sorted(config.items()))
        if key not in cache:
            model = make_model(**config)
            path = folder / f"model_{len(cache)}.onnx"
            export_onnx(model, path)
            cache[key] = Exported(model, path)
        return cache[key]

    return get


def write_checkpoint(path: Path, seed: int = 0, **config) -> RecurrentEncoder:
    """Save a tiny untrained model as a seqserve checkpoint, with the extras training writes."""
    model = make_model(seed=seed, **config)
    extra = {
        "epoch": 1,
        "train_config": {"epochs": 1, "seed": seed},
        "metrics": {"test_accuracy": 0.25, "val_accuracy": 0.25},
    }
    save_checkpoint(path, model, extra)
    return model


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A 1-layer bidirectional LSTM with attention, saved as a checkpoint."""
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    write_checkpoint(path, cell="lstm", layers=1, bidirectional=True, attention="additive")
    return path


@pytest.fixture(scope="session")
def tiny_stream_checkpoint(tmp_path_factory) -> Path:
    """A 2-layer unidirectional GRU with step logits, saved as a checkpoint."""
    path = tmp_path_factory.mktemp("ckpt_stream") / "checkpoint.pt"
    write_checkpoint(path, seed=1, cell="gru", layers=2, bidirectional=False, attention="none", step_logits=True)
    return path


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python <args>` from the repository root (so `model`, `seqserve`, `export` import)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def staging_leftovers(repository: Path) -> list[Path]:
    return sorted(repository.glob(".staging-*")) if repository.exists() else []
