"""PyTorch side of seqserve: the recurrent encoder, its data, training, export and checkpoints.

Installed as `seqserve.model`; it needs the `train` extra (torch, onnx, aeon, ...), which serving never does.
"""

try:
    import torch  # noqa: F401
except ModuleNotFoundError as exc:
    raise ModuleNotFoundError(f"seqserve.model needs the train extra ({exc.name} is not installed): "
                              "pip install 'seqserve[train]'", name=exc.name) from exc

from .config import EncoderConfig
from .encoder import RecurrentEncoder

__all__ = ["EncoderConfig", "RecurrentEncoder"]
