"""Shared fixtures. Nothing here imports torch, so the serving tests run on a serving-only install: the model
helpers (tests/tiny_models.py) are imported when a fixture or test that needs them runs.

Exported ONNX files and checkpoints are cached for the session: each architecture is exported once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from tiny_models import Exported

MODEL_HELPERS = {"CELLS", "F", "H", "C", "LABELS", "make_config", "make_model", "random_batch", "random_state",
                 "torch_outputs", "ort_run", "Exported", "write_checkpoint"}


def __getattr__(name: str) -> Any:
    """`from conftest import make_model` (the model tests' imports) reaches tests/tiny_models.py, which needs torch."""
    if name in MODEL_HELPERS:
        import tiny_models

        return getattr(tiny_models, name)
    raise AttributeError(name)


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Callable[..., Exported]:
    """exported(cell=..., layers=..., ...) -> Exported, each architecture exported once per session."""
    from tiny_models import export_model

    cache: dict[tuple, Exported] = {}
    folder = tmp_path_factory.mktemp("onnx")

    def get(**config) -> Exported:
        key = tuple(sorted(config.items()))
        if key not in cache:
            cache[key] = export_model(folder, len(cache), **config)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A 1-layer bidirectional LSTM with attention, saved as a checkpoint."""
    from tiny_models import write_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    write_checkpoint(path, cell="lstm", layers=1, bidirectional=True, attention="additive")
    return path


@pytest.fixture(scope="session")
def tiny_stream_checkpoint(tmp_path_factory) -> Path:
    """A 2-layer unidirectional GRU with step logits, saved as a checkpoint."""
    from tiny_models import write_checkpoint

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
