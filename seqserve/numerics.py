"""Numeric helpers shared by the server, the batch job and the client (numpy only): softmax, and the
gather that pads packed sequences (seqserve.inference builds on it)."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities along the last axis, computed stably (the max is subtracted first)."""
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def pad_rows(steps: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sequences that start at `starts` (B,) in a packed steps array (N, F), `lengths` (B,) long,
    as one right-padded x (B, T_max, F): one gather, whatever the number of sequences."""
    B, F = len(lengths), steps.shape[1]
    T = max(1, int(lengths.max(initial=0)))  # a batch of empty chunks still runs one (padded) step
    x = np.zeros((B, T, F), dtype=np.float32)  # (B, T, F)
    packed_at, padded_at = step_rows(starts, lengths, T)
    x.reshape(B * T, F)[padded_at] = steps[packed_at]
    return x, lengths.astype(np.int64, copy=False)


def step_rows(starts: np.ndarray, lengths: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Where every real step of B sequences lives: its row in a packed array (the sequences start at
    `starts` (B,)) and in a padded batch's (B * width, ...) view. Two (sum T_i,) index arrays."""
    firsts = np.repeat(np.cumsum(lengths) - lengths, lengths)  # (N,) each step's sequence's first step, packed
    within = np.arange(int(lengths.sum())) - firsts  # (N,) the step's place in its sequence
    packed_at = np.repeat(starts, lengths) + within  # (N,)
    padded_at = np.repeat(np.arange(len(lengths)) * width, lengths) + within  # (N,)
    return packed_at, padded_at
