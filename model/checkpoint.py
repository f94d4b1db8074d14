"""Checkpoints are `state_dict` + config (plain data), loaded with `weights_only=True`: no pickled modules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .config import EncoderConfig
from .encoder import RecurrentEncoder
from .errors import CheckpointError, ConfigError

FORMAT = "seqserve.checkpoint/1"


def save_checkpoint(path: str | Path, model: RecurrentEncoder, extra: dict[str, Any] | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> tuple[RecurrentEncoder, dict[str, Any]]:
    """Rebuild the model from its config and load its weights; returns (model in eval mode, extra)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint: no such file {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise CheckpointError(f"checkpoint: cannot read {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint: {path} is not a seqserve checkpoint (expected format {FORMAT})")
    for key, kind in (("config", dict), ("state_dict", dict)):
        if not isinstance(payload.get(key), kind):
            raise CheckpointError(f"checkpoint: {path} has no {key!r} mapping")
    try:
        config = EncoderConfig.from_dict(payload["config"])
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"checkpoint: {path} has an invalid config: {exc}") from None
    model = RecurrentEncoder(config)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint: weights in {path} do not fit its config: {exc}") from None
    return model.eval(), payload.get("extra", {})
