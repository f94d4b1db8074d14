"""Tiny models for the model / export / repository tests (they need torch): configs, seeded models,
random batches and states, checkpoints, and exported ONNX files run through the one onnxruntime reference.

Models are tiny (H = 16) so these tests run in well under a few minutes on 2 cores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from reference import run_session

from seqserve.contract import input_names, output_names
from seqserve.model.checkpoint import save_checkpoint
from seqserve.model.config import EncoderConfig
from seqserve.model.encoder import RecurrentEncoder
from seqserve.model.onnx_export import export_onnx
from seqserve.model.parity import make_session

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


def ort_run(session: ort.InferenceSession, model: RecurrentEncoder, x, lengths, h0=None, c0=None,
            ) -> dict[str, np.ndarray]:
    """Run an exported model with the one onnxruntime reference (zero state when a streaming model gets no
    (h0, c0)); its inputs and outputs must be the contract's."""
    arch = model.config.architecture
    assert sorted(i.name for i in session.get_inputs()) == sorted(input_names(arch))
    outputs = run_session(session, np.asarray(x), np.asarray(lengths), h0, c0)
    assert list(outputs) == list(output_names(arch))
    return outputs


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


def export_model(folder: Path, index: int, **config) -> Exported:
    """A tiny model built from `config`, exported to folder/model_<index>.onnx."""
    model = make_model(**config)
    path = folder / f"model_{index}.onnx"
    export_onnx(model, path)
    return Exported(model, path)


# Models of the other task and of the conv input stage (test_encoder_tasks, test_export_tasks).
TARGET_MEAN, TARGET_STD = (10.0, -3.0), (4.0, 0.25)


def regressor_config(**changes) -> EncoderConfig:
    base = dict(task="regress", num_targets=2, class_labels=(), target_mean=TARGET_MEAN, target_std=TARGET_STD)
    return make_config(**(base | changes))


def conv_config(**changes) -> EncoderConfig:
    return make_config(**({"input_stage": "conv", "conv_channels": 6, "conv_kernel": 5, "conv_stride": 3} | changes))


def model_of(config: EncoderConfig, seed: int = 0) -> RecurrentEncoder:
    torch.manual_seed(seed)
    return RecurrentEncoder(config).eval()
