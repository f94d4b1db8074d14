"""The inline path: a lone caller's short sequence runs at once in its own call (no queue, no thread hops),
when this model's measured time per padded step says it will be quick."""

from __future__ import annotations

from .activity import Activity
from .queue import WorkQueue
from .round import Job


class InlinePath:
    """Whether a job runs at once; `measure` feeds it every run's time per padded step (a moving average)."""

    def __init__(self, max_seconds: float, activity: Activity, queue: WorkQueue) -> None:
        self.max_seconds = max_seconds
        self.activity = activity
        self.queue = queue
        self.seconds_per_step: float | None = None  # unknown until a run is measured

    def measure(self, padded_steps: int, seconds: float) -> None:
        """Fold one run into the moving average of seconds per padded step."""
        rate = seconds / padded_steps
        previous = self.seconds_per_step
        self.seconds_per_step = rate if previous is None else 0.8 * previous + 0.2 * rate

    def alone(self) -> bool:
        """One request open (the one asking) and nothing queued."""
        return self.activity.open == 1 and self.queue.empty

    def admits(self, job: Job) -> bool:
        """A lone caller's one sequence, expected to run within max_seconds.

        Only when the batcher is idle and has been for min_idle: under load the event loop must stay free
        to read the next requests (which then gather into batches), and a request that follows the previous
        one's answer that quickly is load, not a lone caller.
        """
        return (len(job) == 1 and self.alone() and self.activity.after_idle_spell(job) and not self.queue.held
                and self.seconds_per_step is not None
                and max(1, int(job.sequences.lengths[0])) * self.seconds_per_step <= self.max_seconds)
