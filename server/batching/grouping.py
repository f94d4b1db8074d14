"""How a big call's sequences are cut into parts that run side by side and end together (a round that runs
on one inference thread is grouped by length by the core: seqserve.inference.length_groups)."""

from __future__ import annotations

import itertools

import numpy as np


def balanced_parts(lengths: np.ndarray, parts: int) -> list[np.ndarray]:
    """Indices of sequences in `parts` runs of similar length, shortest first, each padded to its longest:
    cut where the padded steps (sequences x longest) of the costliest run are fewest, so that runs side by
    side end together. Every run holds at least one sequence."""
    order = np.argsort(lengths, kind="stable")  # (B,)
    steps = np.maximum(lengths[order], 1)  # (B,) sorted
    bounds = [0, len(order)]  # run j is order[bounds[j]:bounds[j + 1]]
    while len(bounds) - 1 < min(parts, len(order)):
        costs = [(end - start) * int(steps[end - 1]) for start, end in itertools.pairwise(bounds)]
        j = costs.index(max(costs))
        if bounds[j + 1] - bounds[j] < 2:
            break
        bounds.insert(j + 1, bounds[j] + best_cut(steps[bounds[j]:bounds[j + 1]]))
    return [order[start:end] for start, end in itertools.pairwise(bounds)]


def best_cut(steps: np.ndarray) -> int:
    """Where to cut sorted lengths (m >= 2,) in two so that the costlier side pads the fewest steps."""
    m = len(steps)
    at = np.arange(1, m)  # (m - 1,) the first side is steps[:at]
    cost = np.maximum(at * steps[at - 1], (m - at) * steps[-1])  # (m - 1,)
    return int(at[np.argmin(cost)])
