"""PyTorch side of seqserve: the recurrent encoder, its data, training and checkpoints."""

from model.config import EncoderConfig
from model.encoder import RecurrentEncoder

__all__ = ["EncoderConfig", "RecurrentEncoder"]
