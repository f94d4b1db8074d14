"""How a Batcher forms batches: one frozen dataclass, built by keyword, whose defaults are the server's."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class BatchPolicy:
    """How a Batcher forms batches. The server's flags of the same names take their defaults from here
    (server/config.py); `enabled` is --batching and `max_queued` is --max-queued-sequences."""

    enabled: bool = True  # off: every sequence runs alone, through the same code
    max_batch_size: int = 64  # sequences in one onnxruntime run
    # Under load, a round waits this long for more requests (up to max_batch_size) before it runs: bigger
    # batches cost onnxruntime less CPU a sequence. Measured (README, Performance: paired A/B, 2 cores):
    # 64 clients +16-26 % seq/s over 0 ms, 8 clients -4..+8 %, 1 client unchanged (a lone caller never waits).
    max_queue_delay_ms: float = 2.0
    # Split a batch by length where padding would exceed this fraction of its real steps, but never cut off
    # fewer than padding_min_split sequences. Measured on JapaneseVowels, onnxruntime in-process: random
    # 64-sequence batches ran 1.3x faster in ~3 groups than padded as one; at 8 and 20, splitting gained nothing.
    padding_waste: float = 0.25
    padding_min_split: int = 16
    max_queued: int = 8192  # sequences waiting; beyond it new work is refused (RESOURCE_EXHAUSTED)
    # Batches run at once, each in its own inference thread (0: one per intra-op thread: runs_at_once).
    # On a few cores, two one-thread runs side by side beat one two-thread run: the recurrent kernels sync
    # their threads every step, and a busy core (the event loop, a client) stalls every sync (bench: 2.3 ms
    # -> 14 ms per batch with one core busy).
    concurrent_batches: int = 0
    # A lone caller's sequence whose run is expected to take at most this long runs at once in its own call
    # (0 = never), skipping the queue and two thread hops; the expectation is this model's measured time per
    # padded step x its length. At 0.5 ms a slow phase of the 2-core bench machine (batch-1 runs ~1 ms) sent
    # lone calls through the queue: 2 ms gave 1 client -19..-22 % p50 and CPU a call, 8 clients +5 %, 64
    # unchanged (paired A/B, README Performance).
    inline_max_ms: float = 2.0
    # A request arriving at least this long after the batcher went idle is a lone caller, not load.
    # Measured on loopback (bench/PROFILE.md): a client's own round trip takes longer than 0.2 ms,
    # while the gap between requests of a saturated loop is shorter.
    inline_min_idle_ms: float = 0.2
    # A call of at least this many sequences (up to max_batch_size), alone in its round, runs as one part
    # per intra-op thread, side by side, each on a one-thread session in a lane of its own (0 = never): no
    # per-step thread syncs. Measured (README, Performance): 2 clients x 64-sequence calls, 1.3x the seq/s of
    # one round on the inference thread.
    parallel_call_min: int = 32


def runs_at_once(concurrent_batches: int, threads: int) -> int:
    """Batches that run at once with `threads` intra-op threads: concurrent_batches, or (0) one per thread."""
    return max(1, concurrent_batches or threads)
