"""Recurrent encoder: RNN / LSTM / GRU, multi-layer, optionally bidirectional, with additive attention.

Shapes follow PyTorch's batch-first conventions. B = batch, T = time, F = features,
H = hidden size, L = layers, D = directions (1 or 2), C = classes.

Inputs
    x        (B, T, F) float32, raw features (normalisation happens inside the model)
    lengths  (B,)      int64, real length of each row; steps at t >= length are padding
    h0, c0   (L, B, H) optional initial state (unidirectional models only; c0 for LSTM)

Outputs (`EncoderOutput`)
    outputs    (B, T, D*H)  last layer, 0 on padding; outputs[..., :H] is the forward
                            direction, outputs[..., H:] the backward one
    h_n        (L*D, B, H)  final state of every layer and direction, PyTorch order:
                            h_n[2*l] forward and h_n[2*l + 1] backward of layer l when D = 2,
                            so h_n[-2], h_n[-1] are the last layer's forward and backward
    c_n        (L*D, B, H)  LSTM only
    context    (B, D*H)     attention-weighted sum of outputs (attention models)
    attention  (B, T)       attention weights; each row sums to 1, exactly 0 on padding
    logits     (B, C)
    step_logits (B, T, C)   running prediction after each step (unidirectional, if configured)

Variable lengths are exact: the recurrent layers run on a packed sequence, so a padded
batch gives the same results as each sequence run alone, and a backward direction starts
at each row's own last step. A row of length 0 (a streaming chunk with no new steps)
passes its initial state through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .config import EncoderConfig
from .errors import InputShapeError

_RNN_TYPES: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


@dataclass
class EncoderOutput:
    outputs: Tensor
    h_n: Tensor
    logits: Tensor
    c_n: Tensor | None = None
    context: Tensor | None = None
    attention: Tensor | None = None
    step_logits: Tensor | None = None

    def as_dict(self) -> dict[str, Tensor]:
        return {k: v for k, v in vars(self).items() if v is not None}


class AdditiveAttention(nn.Module):
    """Bahdanau attention: score_t = v^T tanh(W1 h_t [+ W2 q]), softmax over the valid steps.

    Without a query (query_size 0) W1 carries a bias and the scores depend on the steps alone.
    """

    def __init__(self, value_size: int, query_size: int, attention_size: int) -> None:
        super().__init__()
        self.W1 = nn.Linear(value_size, attention_size, bias=not query_size)
        self.W2 = nn.Linear(query_size, attention_size) if query_size else None
        self.v = nn.Linear(attention_size, 1, bias=False)

    def forward(self, values: Tensor, query: Tensor | None, mask: Tensor) -> tuple[Tensor, Tensor]:
        # values (B, T, V), query (B, Q) or None, mask (B, T) bool, True on real steps
        keys = self.W1(values)  # (B, T, A)
        if self.W2 is not None:
            keys = keys + self.W2(query).unsqueeze(1)  # (B, T, A)
        scores = self.v(torch.tanh(keys)).squeeze(-1)  # (B, T)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1) * mask  # (B, T), exactly 0 on padding
        context = torch.bmm(weights.unsqueeze(1), values).squeeze(1)  # (B, V)
        return context, weights


class RecurrentEncoder(nn.Module):
    """Sequence classifier built from a recurrent encoder, see the module docstring for shapes."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        H, D = config.hidden_size, config.num_directions
        mean = torch.tensor(config.feature_mean or [0.0] * config.input_size)
        std = torch.tensor(config.feature_std or [1.0] * config.input_size)
        self.register_buffer("feature_mean", mean)  # (F,)
        self.register_buffer("feature_inv_std", 1.0 / std)  # (F,)
        self.rnn = _RNN_TYPES[config.cell](
            input_size=config.input_size,
            hidden_size=H,
            num_layers=config.num_layers,
            batch_first=True,
            bidirectional=config.bidirectional,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.attention = (
            AdditiveAttention(D * H, D * H if config.attention_query else 0, config.attention_size)
            if config.attention == "additive"
            else None
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(D * H, config.num_classes)

    def initial_state(self, batch: int, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor | None]:
        """Zero (h0, c0), each (L*D, B, H); c0 is None unless the cell is an LSTM."""
        c = self.config
        shape = (c.num_layers * c.num_directions, batch, c.hidden_size)
        h0 = torch.zeros(shape, dtype=dtype)
        return h0, (torch.zeros(shape, dtype=dtype) if c.cell == "lstm" else None)

    def check_inputs(self, x: Tensor, lengths: Tensor, h0: Tensor | None, c0: Tensor | None) -> None:
        cfg = self.config
        if x.dim() != 3 or x.shape[-1] != cfg.input_size:
            raise InputShapeError(f"x: expected shape (batch, time, {cfg.input_size}), got {tuple(x.shape)}")
        B, T = x.shape[0], x.shape[1]
        if lengths.shape != (B,):
            raise InputShapeError(f"lengths: expected shape ({B},), got {tuple(lengths.shape)}")
        if B and (lengths.min() < 0 or lengths.max() > T):
            raise InputShapeError(f"lengths: every length must be in [0, {T}] (the time dimension of x)")
        state_shape = (cfg.num_layers * cfg.num_directions, B, cfg.hidden_size)
        if h0 is None and c0 is not None:
            raise InputShapeError("h0: c0 was given without h0")
        if cfg.cell == "lstm" and h0 is not None and c0 is None:
            raise InputShapeError("c0: an LSTM needs both h0 and c0")
        for name, state in (("h0", h0), ("c0", c0)):
            if state is not None and tuple(state.shape) != state_shape:
                raise InputShapeError(f"{name}: expected shape {state_shape}, got {tuple(state.shape)}")

    def forward(
        self, x: Tensor, lengths: Tensor, h0: Tensor | None = None, c0: Tensor | None = None
    ) -> EncoderOutput:
        if not torch.jit.is_tracing():
            self.check_inputs(x, lengths, h0, c0)
        cfg = self.config
        B, T = x.shape[0], x.shape[1]
        if h0 is None:
            h0, c0 = self.initial_state(B, x.dtype)
        z = (x - self.feature_mean) * self.feature_inv_std  # (B, T, F)

        # pack_padded_sequence needs length >= 1: a row with no steps runs one padded step,
        # then gets its initial state back and all-zero outputs.
        has_steps = lengths > 0  # (B,)
        packed = pack_padded_sequence(z, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        state = (h0, c0) if cfg.cell == "lstm" else h0
        packed_out, final = self.rnn(packed, state)
        outputs, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=T)  # (B, T, D*H)
        mask = torch.arange(T, device=x.device).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
        outputs = outputs * mask.unsqueeze(-1).to(outputs.dtype)

        keep = has_steps.view(1, B, 1)
        if cfg.cell == "lstm":
            h_n, c_n = final  # (L*D, B, H) each
            h_n, c_n = torch.where(keep, h_n, h0), torch.where(keep, c_n, c0)
        else:
            h_n, c_n = torch.where(keep, final, h0), None

        result = EncoderOutput(outputs=outputs, h_n=h_n, c_n=c_n, logits=outputs.new_empty(0))
        if self.attention is not None:
            query = self._last_layer_state(h_n) if cfg.attention_query else None  # (B, D*H)
            result.context, result.attention = self.attention(outputs, query, mask)
        result.logits = self.classify(self.summary(result))  # (B, C)
        if cfg.step_logits:
            step_logits = self.head(self.dropout(outputs))  # (B, T, C)
            result.step_logits = step_logits * mask.unsqueeze(-1).to(step_logits.dtype)
        return result

    def summary(self, result: EncoderOutput) -> Tensor:
        """What the head reads: the attention context, else the last layer's final states: (B, D*H)."""
        return result.context if result.context is not None else self._last_layer_state(result.h_n)

    def classify(self, summary: Tensor) -> Tensor:
        """The classification head: (B, D*H) -> (B, C)."""
        return self.head(self.dropout(summary))

    def _last_layer_state(self, h_n: Tensor) -> Tensor:
        """Concatenate the last layer's final states over directions: (L*D, B, H) -> (B, D*H)."""
        D = self.config.num_directions
        return torch.cat([h_n[-D + d] for d in range(D)], dim=-1)
