"""The batch job: read records lazily, predict them in length-sorted batches, write as they finish.

Memory stays bounded whatever the input size. Records are read one at a time into a chunk (at
most `chunk_size` records or `chunk_bytes` of steps; the first chunks are smaller, so the backend
starts early). A full chunk is sorted by length and cut into batches, so padding stays small; the
batches go to the backend while the next chunk is read, and their results are written, and
flushed, in the order they were sent. About two chunks are in memory at once; what grows with the
input is only the set of ids seen (to catch duplicate ids, and to skip finished ones on --resume).

Records that cannot be predicted go to the errors file with their reason and the run goes on:
unparseable records, duplicate ids, empty sequences, a wrong feature count, NaN or Inf, and
sequences the backend rejects (a rejected batch is retried one sequence at a time, so only the
bad ones fail).
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from seqserve.batch.backends import Backend, ModelInfo, Predictions
from seqserve.batch.errors import BatchError, RecordRejected
from seqserve.batch.readers import Fields, Item, detect_format, read_records
from seqserve.batch.records import BadRecord, Record, Records
from seqserve.batch.writers import ErrorLog, Writer, detect_output_format, open_writer
from seqserve.inference import length_groups

BATCH_SIZE = 64
CHUNK_SIZE = 8192
CHUNK_BYTES = 32 << 20
FIRST_CHUNK = 1024  # the first chunks ramp up from this, so the backend starts early
TASK_RECORDS = 512  # records per trip to the inference thread (one call at a time)
MAX_BATCH_STEPS = 1 << 16  # padded steps (B x T) in one call, so long sequences make smaller batches
EXIT_OK, EXIT_FATAL, EXIT_FAILED_RECORDS, EXIT_INTERRUPTED = 0, 1, 3, 130


@dataclass(frozen=True)
class JobConfig:
    input: Path
    output: Path
    input_format: str | None = None  # default: from the input's suffix
    output_format: str | None = None  # default: from the output's suffix
    errors: Path | None = None  # default: <output>.errors.jsonl, e.g. preds.parquet.errors.jsonl
    fields: Fields = Fields()
    tensors: tuple[str, ...] = ()  # extra outputs per prediction (backends.TENSORS)
    batch_size: int = BATCH_SIZE
    chunk_size: int = CHUNK_SIZE
    chunk_bytes: int = CHUNK_BYTES
    max_batch_steps: int = MAX_BATCH_STEPS
    resume: bool = False
    overwrite: bool = False
    progress: bool = False
    rows_per_file: int = 100_000  # Parquet output: rows per part file

    @property
    def errors_path(self) -> Path:
        return self.errors or self.output.with_name(self.output.name + ".errors.jsonl")


@dataclass
class Summary:
    input: str
    output: str
    errors: str
    backend: str
    model: str = ""
    version: int = 0
    read: int = 0  # records in the input, good or bad
    skipped: int = 0  # already in the output (--resume)
    written: int = 0
    failed: int = 0
    labelled: int = 0  # written predictions whose input had a label
    correct: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    error: str | None = None

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def sequences_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_status(self) -> int:
        if self.error is not None:
            return EXIT_FATAL
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED_RECORDS if self.failed else EXIT_OK

    def line(self) -> str:
        text = (f"{self.written} written, {self.failed} failed, {self.skipped} skipped (already in the output) "
                f"of {self.read} read in {self.seconds:.1f}s ({self.sequences_per_second:.0f} seq/s)")
        if self.accuracy is not None:
            text += f"; accuracy {self.accuracy:.4f} ({self.correct}/{self.labelled})"
        if self.failed:
            text += f"; failures in {self.errors}"
        if self.interrupted:
            text += "; interrupted: run again with --resume to finish"
        if self.error is not None:
            text += f"; stopped by an error: {self.error}"
        return text

    def to_dict(self) -> dict:
        return {**asdict(self), "accuracy": self.accuracy, "sequences_per_second": self.sequences_per_second,
                "exit_status": self.exit_status}


DUPLICATE = "duplicate id: an earlier record has the same id"


def check_shape(length: int, width: int, features: int) -> str | None:
    """Why the model cannot take a sequence of this shape, or None."""
    if length == 0:
        return "empty sequence: at least 1 step is needed"
    if width != features:
        return f"has {width} features per step, the model expects {features}"
    return None


def split_nonfinite(records: Records) -> tuple[Records, list[BadRecord]]:
    """(the records with only finite values, the others as BadRecords), in one vectorised pass."""
    finite = records.finite_rows()  # (N,)
    if finite.all():
        return records, []
    bad = []
    for row in np.flatnonzero(~finite).tolist():
        step = int(np.flatnonzero(~np.isfinite(records.record(row).steps).all(axis=1))[0])
        bad.append(records.bad(row, f"contains NaN or Inf (first at step {step})"))
    return records.take(np.flatnonzero(finite)), bad


class Screen:
    """For each item read: a Record to predict, None to skip (already in the output), or a BadRecord;
    for a `Records` block, its rows to predict, its bad rows and how many to skip.

    Values are checked afterwards, a chunk at a time (split_nonfinite)."""

    def __init__(self, features: int, done: set[str]) -> None:
        self.features = features
        self.done = done
        self.seen: set[str] = set()

    def __call__(self, item: Record | BadRecord) -> Record | BadRecord | None:
        # `__class__ is` and the set's length rather than isinstance and `in` + add: this runs per record.
        if item.__class__ is not Record:
            return item
        seen = self.seen
        before = len(seen)
        seen.add(item.id)
        if len(seen) == before:
            return BadRecord(item.index, item.id, DUPLICATE, item.line)
        if item.id in self.done:
            return None
        shape = item.steps.shape
        if shape[0] and shape[1] == self.features:
            return item
        reason = check_shape(shape[0], shape[1], self.features)
        return BadRecord(item.index, item.id, reason, item.line) if reason else item

    def block(self, records: Records) -> tuple[Records, list[BadRecord], int]:
        """(the rows to predict, the bad rows, how many rows to skip): set operations on the whole
        block, and a pass row by row only when one of them finds something."""
        unique = set(records.ids)
        clean = (len(unique) == len(records) and self.seen.isdisjoint(unique)
                 and (not self.done or self.done.isdisjoint(unique))
                 and records.features == self.features and records.lengths.all())
        if clean:
            self.seen |= unique
            return records, [], 0
        keep, bad, skipped = [], [], 0
        width = records.features
        for row, (rid, length) in enumerate(zip(records.ids, records.lengths.tolist(), strict=True)):
            if rid in self.seen:
                bad.append(records.bad(row, DUPLICATE))
                continue
            self.seen.add(rid)
            if rid in self.done:
                skipped += 1
            elif reason := check_shape(length, width, self.features):
                bad.append(records.bad(row, reason))
            else:
                keep.append(row)
        return records.take(keep), bad, skipped


def plan_batches(records: Records, batch_size: int, max_batch_steps: int = MAX_BATCH_STEPS) -> list[Records]:
    """Sort by length and cut into batches of at most batch_size records and max_batch_steps padded
    steps (the core's one grouping policy, seqserve.inference.length_groups)."""
    groups = length_groups(records.lengths, max_size=batch_size, max_padded_steps=max_batch_steps)
    return [records.take(group) for group in groups]


class Progress:
    """A tqdm bar counting sequences (with seq/s); a line every 10 s without tqdm; nothing when off."""

    def __init__(self, enabled: bool, description: str) -> None:
        self.bar = None
        self.enabled = enabled
        self.count = 0
        self.started = self.last = time.perf_counter()
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(desc=description, unit="seq", unit_scale=True, dynamic_ncols=True, smoothing=0.1)

    def update(self, written: int, failed: int, skipped: int) -> None:
        if not self.enabled:
            return
        done = written + failed + skipped
        if self.bar is not None:
            self.bar.update(done - self.count)
            self.bar.set_postfix(failed=failed, skipped=skipped, refresh=False)
        elif time.perf_counter() - self.last >= 10.0:
            self.last = time.perf_counter()
            rate = written / (self.last - self.started)
            print(f"{done} sequences ({written} written, {failed} failed, {skipped} skipped), {rate:.0f} seq/s",
                  file=sys.stderr, flush=True)
        self.count = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class JobOutput:
    """The output side of a job, shared by the local/remote and the Ray paths: predictions, the errors
    file, the counts and the progress bar."""

    def __init__(self, config: JobConfig, info: ModelInfo, backend_name: str) -> None:
        self.config = config
        fmt = detect_output_format(config.output, config.output_format)
        self.writer: Writer
        self.writer, self.done = open_writer(config.output, fmt, config.tensors, config.resume, config.overwrite,
                                             config.rows_per_file)
        self.errors = ErrorLog(config.errors_path)
        self.summary = Summary(str(config.input), str(config.output), str(config.errors_path), backend_name,
                               info.name, info.version)
        self.progress = Progress(config.progress, f"{info.name} v{info.version}")
        self.started = time.perf_counter()

    def read(self) -> None:
        self.summary.read += 1

    def reading(self, count: int) -> None:
        """`count` records read so far."""
        self.summary.read = count

    def skip(self, count: int = 1) -> None:
        self.summary.skipped += count

    def fail(self, bad: BadRecord) -> None:
        self.errors.write(bad)
        self.summary.failed += 1
        self._progress()

    def commit(self, predictions: Predictions) -> None:
        self.writer.write(predictions)
        s = self.summary
        s.written += len(predictions)
        for label, truth in zip(predictions.labels, predictions.true_labels, strict=True):
            if truth is not None:
                s.labelled += 1
                s.correct += label == truth
        self._progress()

    def _progress(self) -> None:
        s = self.summary
        self.progress.update(s.written, s.failed, s.skipped)

    def close(self) -> Summary:
        try:
            self.writer.close()
        finally:
            self.errors.close()
            self.progress.close()
            self.summary.seconds = time.perf_counter() - self.started
        return self.summary


def one_by_one(infer: Callable[[Records], Predictions], batch: Records,
               rejection: RecordRejected) -> tuple[list[Predictions], list[BadRecord]]:
    """After a batch was rejected: predict its records one at a time, so only the bad ones fail."""
    if len(batch) == 1:
        return [], [batch.bad(0, str(rejection))]
    predictions, failures = [], []
    for row in range(len(batch)):
        try:
            predictions.append(infer(batch.take([row])))
        except RecordRejected as exc:
            failures.append(batch.bad(row, str(exc)))
    return predictions, failures


class Sink(Protocol):
    """Where screening reports what it will not predict, and how far reading got."""

    def fail(self, bad: BadRecord) -> None: ...

    def skip(self, count: int = 1) -> None: ...

    def reading(self, count: int) -> None: ...


def chunks(items: Iterable[Item], screen: Screen, sink: Sink, chunk_size: int, chunk_bytes: int,
           first_chunk: int = FIRST_CHUNK, on_item: Callable[[], None] = lambda: None) -> Iterable[Records]:
    """Screen every item and group the records to predict into chunks. The first chunk is small and
    each next one twice as big, up to chunk_size, so the backend starts early. `on_item` runs every
    32 items and after every block (the pipeline writes finished batches there)."""
    singles: list[Record] = []  # records read one at a time
    blocks: list[Records] = []
    rows = size = read = 0
    limit = min(first_chunk, chunk_size)
    for count, item in enumerate(items, start=1):
        if item.__class__ is Records:
            read += len(item)
            good, bad, skipped = screen.block(item)
            for b in bad:
                sink.fail(b)
            if skipped:
                sink.skip(skipped)
            if len(good):
                blocks.append(good)
                rows, size = rows + len(good), size + good.nbytes
            sink.reading(read)
            on_item()
        elif item.__class__ is Record or item.__class__ is BadRecord:
            read += 1
            screened = screen(item)
            if screened.__class__ is Record:
                singles.append(screened)
                rows, size = rows + 1, size + screened.steps.nbytes
            elif screened.__class__ is BadRecord:
                sink.fail(screened)
            else:
                sink.skip()
            if count % 32 == 0:
                sink.reading(read)
                on_item()
        if rows >= limit or size >= chunk_bytes:
            sink.reading(read)
            yield _finite(_chunk(singles, blocks, screen.features), sink)
            singles, blocks, rows, size = [], [], 0, 0
            limit = min(2 * limit, chunk_size)
    sink.reading(read)
    if rows:
        yield _finite(_chunk(singles, blocks, screen.features), sink)


def _chunk(singles: list[Record], blocks: list[Records], features: int) -> Records:
    return Records.concat([Records.of(singles, features), *blocks] if singles else blocks)


def _finite(chunk: Records, sink: Sink) -> Records:
    good, bad = split_nonfinite(chunk)
    for b in bad:
        sink.fail(b)
    return good


def _infer_each(infer: Callable[[Records], Predictions], batches: list[Records]) -> list[Predictions | RecordRejected]:
    results: list[Predictions | RecordRejected] = []
    for batch in batches:
        try:
            results.append(infer(batch))
        except RecordRejected as exc:
            results.append(exc)
    return results


class _InFlight:
    """Work sent to the backend, finished and written in the order it was sent.

    A backend that takes one call at a time gets a chunk's batches in tasks of about TASK_RECORDS
    records (few thread hand-offs, and each task's predictions are written while the next runs); one
    that takes N calls at once gets one task per batch, up to N running.
    """

    def __init__(self, backend: Backend, output: JobOutput, max_records: int) -> None:
        self.backend = backend
        self.output = output
        self.max_records = max_records
        self.executor = ThreadPoolExecutor(max_workers=backend.concurrency, thread_name_prefix="infer")
        self.queue: deque[tuple[list[Records], int, Future]] = deque()
        self.records = 0

    def submit(self, batches: list[Records]) -> None:
        if not batches:
            return
        for task in self._tasks(batches):
            size = sum(map(len, task))
            while self.queue and self.records + size > self.max_records:
                self._finish_one()
            self.queue.append((task, size, self.executor.submit(_infer_each, self.backend.infer, task)))
            self.records += size

    def _tasks(self, batches: list[Records]) -> Iterator[list[Records]]:
        if self.backend.concurrency > 1:
            yield from ([b] for b in batches)
            return
        task, size = [], 0
        for batch in batches:
            task.append(batch)
            size += len(batch)
            if size >= TASK_RECORDS:
                yield task
                task, size = [], 0
        if task:
            yield task

    def harvest(self) -> None:
        """Write whatever has finished at the head of the queue, without waiting."""
        while self.queue and self.queue[0][2].done():
            self._finish_one()

    def drain(self) -> None:
        while self.queue:
            self._finish_one()

    def _finish_one(self) -> None:
        task, size, future = self.queue.popleft()
        self.records -= size
        for batch, result in zip(task, future.result(), strict=True):
            if isinstance(result, RecordRejected):
                parts, failures = one_by_one(self.backend.infer, batch, result)
                for bad in failures:
                    self.output.fail(bad)
                for part in parts:
                    self.output.commit(part)
            else:
                self.output.commit(result)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def run_job(config: JobConfig, backend: Backend, backend_name: str = "local") -> Summary:
    """Run the whole job; returns the summary (also when interrupted or stopped by an error)."""
    fmt = detect_format(config.input, config.input_format)
    items = read_records(config.input, fmt, config.fields)
    output = JobOutput(config, backend.info, backend_name)
    screen = Screen(backend.info.input_size, output.done)
    # Room for one chunk in flight while the next one is read, and for every stream to stay busy.
    inflight = _InFlight(backend, output, max(config.chunk_size, 2 * backend.concurrency * config.batch_size))
    try:
        for chunk in chunks(items, screen, output, config.chunk_size, config.chunk_bytes,
                            on_item=inflight.harvest):
            inflight.submit(plan_batches(chunk, config.batch_size, config.max_batch_steps))
        inflight.drain()
    except KeyboardInterrupt:
        output.summary.interrupted = True
    except (BatchError, OSError) as exc:  # OSError: the disk is full, a file went away
        output.summary.error = str(exc)
    finally:
        inflight.close()
        output.close()
    return output.summary
