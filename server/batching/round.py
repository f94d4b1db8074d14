"""A request's work (`Job`) and the jobs one collection took from the queue (`Round`): their sequences packed
end to end, run in groups, and each group's outputs scattered into the round's packed answer arrays."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Sequence

import numpy as np

from seqserve.inference import Batch, Packed, PackedOutputs, length_groups, with_probabilities
from seqserve.numerics import pad_rows, step_rows
from seqserve.outputs import Layout, batch_as_packed, layout_of

from ..runtime import ModelRuntime
from .clock import Clock

Outcome = float | Exception  # a group's run: its seconds, or what it raised


class Job:
    """One request's sequences; its future gets their answers (PackedOutputs, in request order)."""

    def __init__(self, sequences: Packed, fetch: frozenset[str] | None, enqueued_at: float,
                 after_idle: float = 0.0) -> None:
        self.sequences = sequences
        self.fetch = fetch  # the model outputs its answer needs (None: all)
        self.enqueued_at = enqueued_at
        self.after_idle = after_idle  # how long the batcher had been idle when this job arrived
        self.future: asyncio.Future[PackedOutputs] = asyncio.get_running_loop().create_future()

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def gone(self) -> bool:
        """Answered, failed or cancelled by its caller: nothing more to compute."""
        return self.future.done()

    def deliver(self, answers: PackedOutputs) -> None:
        if not self.future.done():
            self.future.set_result(answers)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class Round:
    """The jobs one collection took from the queue: their sequences packed end to end (B in all), and
    the packed answer arrays their groups' outputs are scattered into. `clock` times each group's run."""

    def __init__(self, runtime: ModelRuntime, jobs: Sequence[Job], clock: Clock) -> None:
        self.runtime = runtime
        self.jobs = list(jobs)
        self.clock = clock
        if len(jobs) == 1:  # the common case at low load: no joining, nothing to cut apart afterwards
            self.lengths, self.steps = jobs[0].sequences.lengths, jobs[0].sequences.steps  # (B,), (N, F)
        else:
            self.lengths = np.concatenate([j.sequences.lengths for j in jobs])  # (B,)
            self.steps = np.concatenate([j.sequences.steps for j in jobs])  # (N, F)
        self.unanswered = [len(j) for j in jobs]  # (J,) sequences of each job not run yet
        self.fetch = self._fetch()
        self.h0 = self._states("h0")
        self.c0 = self._states("c0") if runtime.arch.has_cell_state else None
        self.answers: dict[str, np.ndarray] = {}  # output -> (N, ...) per step, (B, ...) per sequence
        self._answers_made = threading.Lock()  # groups run side by side create the arrays once

    @functools.cached_property
    def starts(self) -> np.ndarray:
        """Where each sequence begins in `steps` (B,)."""
        return np.cumsum(self.lengths) - self.lengths

    @functools.cached_property
    def job_of(self) -> np.ndarray:
        """Which job each sequence belongs to (B,)."""
        return np.repeat(np.arange(len(self.jobs)), self.sizes)

    @functools.cached_property
    def sizes(self) -> np.ndarray:
        """How many sequences each job has (J,)."""
        return np.fromiter((len(j) for j in self.jobs), dtype=np.int64, count=len(self.jobs))

    def _fetch(self) -> list[str] | None:
        """The outputs any job needs, in the model's order (None: all); unrequested ones are not copied."""
        wanted: set[str] = {"logits"}
        for job in self.jobs:
            if job.fetch is None:
                return None
            wanted.update(job.fetch)
        return [name for name in self.runtime.output_names if name in wanted]

    def _states(self, name: str) -> np.ndarray | None:
        """The jobs' initial states side by side (L, B, H), zeros where a job gives none."""
        given = [getattr(j.sequences, name) for j in self.jobs]
        if not self.runtime.arch.streaming or all(state is None for state in given):
            return None
        arch = self.runtime.arch
        return np.concatenate([state if state is not None
                               else np.zeros((arch.num_layers, len(j), arch.hidden_size), np.float32)
                               for j, state in zip(self.jobs, given, strict=True)], axis=1)  # (L, B, H)

    def groups(self, max_size: int, max_waste: float, min_split: int) -> list[np.ndarray]:
        """The round's sequences (indices) in runs of similar length, shortest first."""
        return length_groups(self.lengths, max_size=max_size, max_waste=max_waste, min_split=min_split)

    def run(self, group: np.ndarray, one_thread: bool = False) -> None:
        """Run one group as a padded batch (in the inference thread pool) and keep its answers; `one_thread`:
        on the runtime's one-thread session (groups run side by side)."""
        model = self.runtime.one_thread if one_thread and self.runtime.one_thread is not None else self.runtime
        if self._whole_and_unpadded(group):
            B, T = len(self.lengths), int(self.lengths[0])
            outputs = model.run(Batch(self.steps.reshape(B, T, -1), self.lengths, self.h0, self.c0), self.fetch)
            self.answers = {name: batch_as_packed(name, value) for name, value in with_probabilities(outputs).items()}
            return
        x, lengths = pad_rows(self.steps, self.starts[group], self.lengths[group])  # (G, T, F), (G,)
        h0 = None if self.h0 is None else self.h0[:, group]  # (L, G, H)
        c0 = None if self.c0 is None else self.c0[:, group]
        self._store(group, with_probabilities(model.run(Batch(x, lengths, h0, c0), self.fetch)), x.shape[1])

    def run_all(self, groups: list[np.ndarray], one_thread: bool = False) -> list[Outcome]:
        """Run groups one after the other; each one's seconds, or the exception it raised."""
        outcomes: list[Outcome] = []
        for group in groups:
            started = self.clock.now()
            try:
                self.run(group, one_thread)
            except Exception as exc:  # onnxruntime raises its own types; the batcher retries the group's sequences
                outcomes.append(exc)
            else:
                outcomes.append(self.clock.now() - started)
        return outcomes

    def _whole_and_unpadded(self, group: np.ndarray) -> bool:
        """The group is every sequence of the round, all of one (non-zero) length: the steps are the batch
        as they are and the outputs the answers (a lone sequence, a request of equal lengths)."""
        lengths = self.lengths
        return len(group) == len(lengths) and lengths[0] > 0 and bool((lengths == lengths[0]).all())

    def _store(self, group: np.ndarray, outputs: dict[str, np.ndarray], width: int) -> None:
        """Scatter a group's batch outputs into the round's packed answers."""
        packed_at, padded_at = step_rows(self.starts[group], self.lengths[group], width)
        for name, value in outputs.items():
            layout = layout_of(name)
            if layout is Layout.PER_STEP:  # (G, T, ...) -> rows of (N, ...)
                rows = value.reshape(-1, *value.shape[2:])[padded_at]
                self._answer(name, len(self.steps), value.shape[2:], value.dtype)[packed_at] = rows
            elif layout is Layout.PER_STATE:  # (L*D, G, H) -> (B, L*D, H)
                self._answer(name, len(self.lengths), value.shape[::2], value.dtype)[group] = value.transpose(1, 0, 2)
            else:  # (G, ...) -> (B, ...)
                self._answer(name, len(self.lengths), value.shape[1:], value.dtype)[group] = value

    def _answer(self, name: str, rows: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        with self._answers_made:
            if name not in self.answers:
                self.answers[name] = np.empty((rows, *shape), dtype=dtype)
            return self.answers[name]

    def finished(self, group: np.ndarray) -> list[int]:
        """Count `group` as run; the jobs (indices) whose last sequence it was."""
        if len(self.jobs) == 1:
            self.unanswered[0] -= len(group)
            return [0] if self.unanswered[0] == 0 else []
        done = []
        for j, ran in zip(*np.unique(self.job_of[group], return_counts=True), strict=True):
            self.unanswered[j] -= int(ran)
            if self.unanswered[j] == 0:
                done.append(int(j))
        return done

    @functools.cached_property
    def spans(self) -> list[tuple[int, int, int, int]]:
        """Each job's (first sequence, end, first step, end) in the round, as Python ints."""
        ends = np.cumsum(self.sizes)  # (J,)
        step_ends = np.concatenate([[0], np.cumsum(self.lengths)])  # (B + 1,)
        firsts = ends - self.sizes
        return list(zip(firsts.tolist(), ends.tolist(), step_ends[firsts].tolist(), step_ends[ends].tolist(),
                        strict=True))

    def answers_of(self, j: int) -> PackedOutputs:
        """Job j's answers: views into the round's arrays."""
        if len(self.jobs) == 1:
            return PackedOutputs(self.answers, self.lengths)
        first, end, step0, step_end = self.spans[j]
        return PackedOutputs({name: value[step0:step_end] if layout_of(name) is Layout.PER_STEP else value[first:end]
                              for name, value in self.answers.items()}, self.lengths[first:end])
