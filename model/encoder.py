"""Recurrent encoder: RNN / LSTM / GRU, multi-layer, optionally bidirectional, with additive attention,
an optional strided convolution in front, and a classification or regression head.

Shapes follow PyTorch's batch-first conventions. B = batch, T = time, F = features,
H = hidden size, L = layers, D = directions (1 or 2), C = classes, K = regression targets,
T' = frames the recurrent layers run over: T without an input stage, ceil(T / conv_stride) with one.

Inputs
    x        (B, T, F) float32, raw features (normalisation happens inside the model)
    lengths  (B,)      int64, real length of each row; steps at t >= length are padding
    h0, c0   (L, B, H) optional initial state (streaming models only; c0 for LSTM)

Outputs (`EncoderOutput`)
    outputs    (B, T', D*H) last layer, 0 on padding; outputs[..., :H] is the forward
                            direction, outputs[..., H:] the backward one
    h_n        (L*D, B, H)  final state of every layer and direction, PyTorch order:
                            h_n[2*l] forward and h_n[2*l + 1] backward of layer l when D = 2,
                            so h_n[-2], h_n[-1] are the last layer's forward and backward
    c_n        (L*D, B, H)  LSTM only
    context    (B, D*H)     attention-weighted sum of outputs (attention models)
    attention  (B, T')      attention weights; each row sums to 1, exactly 0 on padding
    logits     (B, C)       classify
    prediction (B, K)       regress: the head's standardised z, scaled back: z * target_std + target_mean
    step_logits (B, T, C)   running prediction after each step (streaming classifiers, if configured)

Variable lengths are exact: the recurrent layers run on a packed sequence, so a padded
batch gives the same results as each sequence run alone, and a backward direction starts
at each row's own last step. A row of length 0 (a streaming chunk with no new steps)
passes its initial state through unchanged. The input stage zeroes the padded steps before its
convolution, so a row's last frame reads exactly the zeros it would read alone (the convolution's
own padding), and a row of length n has ceil(n / conv_stride) real frames (`frame_lengths`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqserve.contract import frame_lengths

from .config import EncoderConfig
from .errors import InputShapeError

_RNN_TYPES: dict[str, Callable[..., nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


@dataclass
class EncoderOutput:
    outputs: Tensor
    h_n: Tensor
    logits: Tensor | None = None  # classify
    prediction: Tensor | None = None  # regress
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


class ConvInputStage(nn.Module):
    """A strided 1-D convolution over time + ReLU: (B, T, F) steps -> (B, ceil(T / stride), C) frames.

    The sequence is zero-padded by kernel - 1 steps, (kernel - 1) // 2 before and the rest after, so
    frame j reads steps j * stride - (kernel - 1) // 2 onwards and a length-n row has ceil(n / stride)
    frames; steps past a row's length are zeroed first, so its frames equal those of the row alone.
    """

    def __init__(self, in_features: int, channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_features, channels, kernel, stride)
        self.padding = ((kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2)  # (before, after)

    def forward(self, z: Tensor, mask: Tensor) -> Tensor:
        # z (B, T, F) normalised, mask (B, T) bool, True on real steps
        z = z * mask.unsqueeze(-1).to(z.dtype)  # (B, T, F), 0 on padding
        windows = nn.functional.pad(z.transpose(1, 2), self.padding)  # (B, F, T + kernel - 1)
        return torch.relu(self.conv(windows)).transpose(1, 2)  # (B, T', C)


def step_mask(lengths: Tensor, time: int) -> Tensor:
    """(B,) lengths -> (B, time) bool, True on each row's real steps."""
    return torch.arange(time, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


class RecurrentEncoder(nn.Module):
    """Sequence classifier or regressor built from a recurrent encoder, see the module docstring for shapes."""

    feature_mean: Tensor  # (F,) buffers
    feature_inv_std: Tensor  # (F,)
    target_mean: Tensor  # (K,) regress only
    target_std: Tensor  # (K,) regress only

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        H, D = config.hidden_size, config.num_directions
        mean = torch.tensor(config.feature_mean or [0.0] * config.input_size)
        std = torch.tensor(config.feature_std or [1.0] * config.input_size)
        self.register_buffer("feature_mean", mean)  # (F,)
        self.register_buffer("feature_inv_std", 1.0 / std)  # (F,)
        self.input_stage = (
            ConvInputStage(config.input_size, config.conv_channels, config.conv_kernel, config.conv_stride)
            if config.input_stage == "conv"
            else None
        )
        if config.task == "regress":
            K = config.num_targets
            self.register_buffer("target_mean", torch.tensor(config.target_mean or [0.0] * K))  # (K,)
            self.register_buffer("target_std", torch.tensor(config.target_std or [1.0] * K))  # (K,)
        self.rnn = _RNN_TYPES[config.cell](
            input_size=config.conv_channels if self.input_stage is not None else config.input_size,
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
        self.head = nn.Linear(D * H, config.num_outputs)

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
        z = (x - self.feature_mean) * self.feature_inv_std  # (B, T, F)
        if self.input_stage is not None:
            z = self.input_stage(z, step_mask(lengths, x.shape[1]))  # (B, T', C_conv)
            lengths = frame_lengths(cfg.architecture, lengths)  # (B,): ceil(length / stride)
        T = z.shape[1]

        # pack_padded_sequence needs length >= 1: a row with no steps runs one padded step,
        # then gets its initial state back and all-zero outputs.
        has_steps = lengths > 0  # (B,)
        packed = pack_padded_sequence(z, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        state = None if h0 is None else (h0, c0) if cfg.cell == "lstm" else h0  # None: the zero state
        packed_out, final = self.rnn(packed, state)
        outputs, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=T)  # (B, T', D*H)
        mask = step_mask(lengths, T)  # (B, T')
        outputs = outputs * mask.unsqueeze(-1).to(outputs.dtype)

        h_n, c_n = final if cfg.cell == "lstm" else (final, None)  # (L*D, B, H) each
        h_n = self._initial_unless_stepped(h_n, h0, has_steps)
        c_n = None if c_n is None else self._initial_unless_stepped(c_n, c0, has_steps)

        result = EncoderOutput(outputs=outputs, h_n=h_n, c_n=c_n)
        if self.attention is not None:
            query = self._last_layer_state(h_n) if cfg.attention_query else None  # (B, D*H)
            result.context, result.attention = self.attention(outputs, query, mask)
        head = self.head_output(self.summary(result))  # (B, C) or (B, K)
        if cfg.task == "regress":
            result.prediction = self.to_target_units(head)  # (B, K)
        else:
            result.logits = head  # (B, C)
        if cfg.step_logits:
            step_logits = self.head(self.dropout(outputs))  # (B, T, C)
            result.step_logits = step_logits * mask.unsqueeze(-1).to(step_logits.dtype)
        return result

    @staticmethod
    def _initial_unless_stepped(final: Tensor, initial: Tensor | None, has_steps: Tensor) -> Tensor:
        """A final state (L*D, B, H), with the initial state (zeros when None) on rows with no steps."""
        keep = has_steps.view(1, final.shape[1], 1)  # (1, B, 1)
        return torch.where(keep, final, torch.zeros_like(final) if initial is None else initial)

    def summary(self, result: EncoderOutput) -> Tensor:
        """What the head reads: the attention context, else the last layer's final states: (B, D*H)."""
        return result.context if result.context is not None else self._last_layer_state(result.h_n)

    def head_output(self, summary: Tensor) -> Tensor:
        """The head: (B, D*H) -> logits (B, C) for classify, standardised predictions z (B, K) for regress."""
        return self.head(self.dropout(summary))

    def classify(self, summary: Tensor) -> Tensor:
        """The classification head: (B, D*H) -> (B, C) logits."""
        return self.head_output(summary)

    def to_target_units(self, z: Tensor) -> Tensor:
        """Regress: standardised predictions (B, K) -> the targets' own units, z * target_std + target_mean."""
        return z * self.target_std + self.target_mean

    def standardise_targets(self, y: Tensor) -> Tensor:
        """Regress: targets (B, K) in their own units -> the head's scale, (y - target_mean) / target_std
        (what a training loss compares `head_output` with)."""
        return (y - self.target_mean) / self.target_std

    def _last_layer_state(self, h_n: Tensor) -> Tensor:
        """Concatenate the last layer's final states over directions: (L*D, B, H) -> (B, D*H)."""
        D = self.config.num_directions
        return torch.cat([h_n[-D + d] for d in range(D)], dim=-1)
