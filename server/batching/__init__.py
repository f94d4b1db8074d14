"""Dynamic batching: concurrent requests for one model version run as padded onnxruntime batches.

Each request's sequences arrive packed end to end (`Packed`) as one `Job`. A `Batcher` takes the
jobs that are queued (up to max_batch_size sequences, waiting up to max_queue_delay_ms for more),
drops jobs whose caller has gone, and runs their sequences as a `Round`: grouped by length so
padding stays small, the groups run one after the other in one trip to the inference thread, each
padded with one gather and its outputs scattered into the round's packed answer arrays with one
index assignment per output. Every job is answered with views into those arrays. Nothing loops over
sequences in Python. With batching off, each sequence runs alone through the same code, so results
are identical either way. A big call alone in its round runs side by side instead: one part per
intra-op thread, cut by length, each on a one-thread session in a thread of its own, while the event
loop goes on serving.

Failure stays small: the queue is bounded (max_queued_sequences; more is refused at once with
RESOURCE_EXHAUSTED), a batch that fails at run time is retried one sequence at a time so only the
culprit's request fails, and if the batcher's loop itself dies, its queued work fails UNAVAILABLE,
later work is refused, and `on_failure` tells the registry (health turns NOT_SERVING for the model).

One module per job:
    policy.py     BatchPolicy: the knobs, by keyword, with the server's defaults
    clock.py      Clock (now, call_later), the real MonotonicClock, a Deadline that bounds an await
    round.py      Job (one request) and Round (the jobs run together, their packed answers)
    grouping.py   balanced_parts: a big call cut into parts that end together
    queue.py      WorkQueue: bounded, held for tests, collects a round within the queue delay
    activity.py   open requests and idle spells (a lone caller or load)
    inline.py     InlinePath: when a lone caller's sequence runs at once in its own call
    lanes.py      SideBySide: a big call's parts in lane threads
    retry.py      a failed group's sequences one by one
    scheduler.py  Batcher: enqueue, the loop of rounds (concurrent ones), supervision
"""

from .clock import Clock, Deadline, MonotonicClock
from .grouping import balanced_parts
from .policy import BatchPolicy, runs_at_once
from .round import Job, Outcome, Round
from .scheduler import Batcher

__all__ = ["Batcher", "BatchPolicy", "Clock", "Deadline", "Job", "MonotonicClock", "Outcome", "Round",
           "balanced_parts", "runs_at_once"]
