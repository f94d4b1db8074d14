"""The peers bench.peers measures seqserve against, each serving the same model.onnx through onnxruntime.

- `kserve_model`: a `kserve.Model` subclass on KServe's `ModelServer` (v2 gRPC `ModelInfer`).
- `mlserver_runtime` + `mlserver/settings.json` and `mlserver/model-settings.json`: an MLServer custom
  runtime with adaptive batching on.

Both run in venvs of their own (`python -m bench.peers --setup`), never in the serving image, and open
their session with seqserve's own `seqserve.inference.open_session` (same session options, 2 intra-op
threads), which needs only numpy and onnxruntime. Both take x (B, T, F) and optional lengths (B,)
INT64 (absent: every row is full length) and answer logits and probabilities (B, classes).
"""

from __future__ import annotations

import numpy as np

from seqserve.numerics import softmax

ANSWERS = ("logits", "probabilities")


def encode(session, x: np.ndarray, lengths: np.ndarray | None) -> dict[str, np.ndarray]:
    """One onnxruntime run on a padded batch: logits (B, C) and their softmax."""
    x = np.ascontiguousarray(x, dtype=np.float32)  # (B, T, F)
    if lengths is None:
        lengths = np.full(len(x), x.shape[1], dtype=np.int64)  # (B,) every row full length
    [logits] = session.run(["logits"], {"x": x, "lengths": np.asarray(lengths, dtype=np.int64).reshape(-1)})
    return {"logits": logits, "probabilities": softmax(logits).astype(np.float32)}
