"""The batch job as a Ray Data pipeline (the optional `ray` extra): read -> map_batches -> write.

    read         one read task on the driver's node (where the input file is) runs the same lazy
                 reader and screening as the local job (duplicate ids, resume, feature count,
                 NaN) and yields blocks of up to 1024 rows; bad and skipped records travel as
                 rows with a status, so the driver counts and reports them
    map_batches  `OrtPredictor`, a callable class: one onnxruntime session per actor, built from the
                 model bytes the driver sends (no shared filesystem needed); each batch of rows is
                 sorted by length and run in batches of `batch_size`
    write        the driver streams the results (ds.iter_batches) into the same writers, errors
                 file, resume and summary as the local job

Sequences and tensors travel as raw float32 bytes; their shapes follow from the length and the
model's architecture.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

import seqserve
from seqserve.batch.backends import OrtModel, Predictions, resolve_version
from seqserve.batch.errors import BackendError, BatchError, RecordRejected
from seqserve.batch.pipeline import JobConfig, JobOutput, Screen, Summary, chunks, one_by_one, plan_batches
from seqserve.batch.readers import detect_format, read_records
from seqserve.batch.records import BadRecord, Record, Records
from seqserve.inference import PER_STATE, PER_STEP
from seqserve.repository import ModelVersion

try:
    import pyarrow as pa
    import ray
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata
except ImportError as missing:  # imported only for --ray: the run stops with this message
    raise BatchError("--ray needs the 'ray' extra: pip install 'seqserve[ray,batch]'") from missing

OK, BAD, SKIP = "ok", "bad", "skip"
BLOCK_ROWS = 1024  # rows per block, and per actor call: enough blocks to keep every actor busy
ROW_COLUMNS = ("index", "id", "line", "status", "reason", "true_label")


def block_rows(config: JobConfig) -> int:
    return min(config.chunk_size, BLOCK_ROWS)


def _rows_table(rows: dict[str, list[Any]]) -> pa.Table:
    return pa.table({
        "index": pa.array(rows["index"], pa.int64()),
        "id": pa.array(rows["id"], pa.string()),
        "line": pa.array(rows["line"], pa.int64()),
        "status": pa.array(rows["status"], pa.string()),
        "reason": pa.array(rows["reason"], pa.string()),
        "true_label": pa.array(rows["true_label"], pa.string()),
        "length": pa.array(rows["length"], pa.int64()),
        "steps": pa.array(rows["steps"], pa.binary()),
    })


class RecordSource(Datasource):
    """One read task over the input file, on the driver's node, yielding blocks of screened rows."""

    def __init__(self, config: JobConfig, features: int, done: set[str]) -> None:
        super().__init__()
        self.path = Path(config.input)
        self.fmt = detect_format(self.path, config.input_format)
        self.fields = config.fields
        self.features = features
        self.done = done
        self.block_rows = block_rows(config)

    @property
    def supports_distributed_reads(self) -> bool:
        return False  # the input is a file on the driver's machine

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        metadata = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=(str(self.path),))
        return [ReadTask(self._read, metadata)]

    def _read(self) -> Iterator[pa.Table]:
        screen, rows = Screen(self.features, self.done), _ScreenedRows()
        items = read_records(self.path, self.fmt, self.fields)
        for chunk in chunks(items, screen, rows, self.block_rows, 1 << 62, first_chunk=self.block_rows):
            yield rows.table(chunk)
        if rows.bad or rows.skipped:
            yield rows.table(None)


class _ScreenedRows:
    """The screening's sink (seqserve.batch.pipeline.Sink): bad and skipped records wait here to travel to
    the driver as rows beside the next chunk."""

    def __init__(self) -> None:
        self.bad: list[BadRecord] = []
        self.skipped = 0

    def fail(self, bad: BadRecord) -> None:
        self.bad.append(bad)

    def skip(self, count: int = 1) -> None:
        self.skipped += count

    def reading(self, count: int) -> None:
        pass

    def table(self, chunk: Records | None) -> pa.Table:
        """Rows for the actors: the chunk's records (OK), then the bad (BAD) and skipped (SKIP) ones."""
        rows: dict[str, list[Any]] = {c: [] for c in (*ROW_COLUMNS, "length", "steps")}

        def add(*values: Any) -> None:
            for column, value in zip(rows, values, strict=True):
                rows[column].append(value)

        for record in _each_record(chunk):
            add(record.index, record.id, record.line, OK, None, record.label, record.length,
                np.ascontiguousarray(record.steps, dtype="<f4").tobytes())
        for bad in self.bad:
            add(bad.index, bad.id, bad.line, BAD, bad.reason, None, 0, b"")
        for _ in range(self.skipped):
            add(None, None, None, SKIP, None, None, 0, b"")
        self.bad, self.skipped = [], 0
        return _rows_table(rows)


def _each_record(chunk: Records | None) -> Iterator[Record]:
    if chunk is not None:
        for row in range(len(chunk)):
            yield chunk.record(row)


class OrtPredictor:
    """map_batches callable class: one onnxruntime session per actor."""

    def __init__(self, version: ModelVersion, model_bytes: bytes, tensors: Sequence[str], threads: int,
                 batch_size: int, max_batch_steps: int) -> None:
        self.model = OrtModel(version, tensors, threads, model_bytes=model_bytes)
        self.features = self.model.info.input_size
        self.batch_size = batch_size
        self.max_batch_steps = max_batch_steps

    def __call__(self, table: pa.Table) -> pa.Table:
        columns = table.to_pydict()
        ok = [i for i, status in enumerate(columns["status"]) if status == OK]
        records = Records.packed(
            np.array([columns["index"][i] for i in ok], dtype=np.int64), [columns["id"][i] for i in ok],
            np.frombuffer(b"".join(columns["steps"][i] for i in ok), dtype="<f4").reshape(-1, self.features),
            np.array([columns["length"][i] for i in ok], dtype=np.int64), [columns["true_label"][i] for i in ok],
            [columns["line"][i] for i in ok])
        results: dict[int, tuple[Predictions, int] | BadRecord] = {}  # by record index
        failures: list[BadRecord]
        for batch in plan_batches(records, self.batch_size, self.max_batch_steps):
            try:
                parts, failures = [self.model.predict(batch)], []
            except RecordRejected as exc:
                parts, failures = one_by_one(self.model.predict, batch, exc)
            by_id = dict(zip(batch.ids, batch.index.tolist(), strict=True))
            for predictions in parts:
                for row, rid in enumerate(predictions.ids):
                    results[by_id[rid]] = (predictions, row)
            for bad in failures:
                results[bad.index] = bad
        return self._table(columns, results)

    def _table(self, columns: dict[str, list], results: dict[int, tuple[Predictions, int] | BadRecord]) -> pa.Table:
        status, reason = list(columns["status"]), list(columns["reason"])
        label: list[str | None] = []
        label_index: list[int | None] = []
        probabilities: list[bytes | None] = []
        tensors: dict[str, list[bytes | None]] = {t: [] for t in self.model.tensors}
        for i, index in enumerate(columns["index"]):
            result = results.get(index) if status[i] == OK else None
            if isinstance(result, BadRecord):
                status[i], reason[i] = BAD, result.reason
                result = None
            if result is None:
                label.append(None)
                label_index.append(None)
                probabilities.append(None)
                for values in tensors.values():
                    values.append(None)
                continue
            predictions, row = result
            label.append(predictions.labels[row])
            label_index.append(int(predictions.label_index[row]))
            probabilities.append(predictions.probabilities[row].astype("<f4").tobytes())
            for t, values in tensors.items():
                values.append(np.ascontiguousarray(predictions.tensors[t][row], dtype="<f4").tobytes())
        out = {
            "index": pa.array(columns["index"], pa.int64()),
            "id": pa.array(columns["id"], pa.string()),
            "line": pa.array(columns["line"], pa.int64()),
            "status": pa.array(status, pa.string()),
            "reason": pa.array(reason, pa.string()),
            "true_label": pa.array(columns["true_label"], pa.string()),
            "length": pa.array(columns["length"], pa.int64()),
            "label": pa.array(label, pa.string()),
            "label_index": pa.array(label_index, pa.int32()),
            "probabilities": pa.array(probabilities, pa.binary()),
        }
        out.update({f"tensor_{t}": pa.array(v, pa.binary()) for t, v in tensors.items()})
        return pa.table(out)


def _tensor(raw: bytes, name: str, length: int, hidden: int) -> np.ndarray:
    values = np.frombuffer(raw, dtype="<f4")
    if name == "attention":
        return values
    if name in PER_STEP:
        return values.reshape(length, -1)
    if name in PER_STATE:
        return values.reshape(-1, hidden)
    return values


def _account(output: JobOutput, table: pa.Table, tensors: Sequence[str], hidden: int) -> None:
    """Write one batch of results: predictions, failures and skipped records."""
    c = table.to_pydict()
    ok: list[int] = []
    for i, status in enumerate(c["status"]):
        output.read()
        if status == SKIP:
            output.skip()
        elif status == BAD:
            output.fail(BadRecord(c["index"][i], c["id"][i], c["reason"][i], c["line"][i]))
        else:
            ok.append(i)
    if not ok:
        return
    probabilities = np.frombuffer(b"".join(c["probabilities"][i] for i in ok), dtype="<f4").reshape(len(ok), -1)
    output.commit(Predictions(
        [c["id"][i] for i in ok], [c["label"][i] for i in ok],
        np.array([c["label_index"][i] for i in ok], dtype=np.int64), probabilities,
        [c["true_label"][i] for i in ok],
        {t: [_tensor(c[f"tensor_{t}"][i], t, c["length"][i], hidden) for i in ok] for t in tensors},
    ))


def code_env() -> dict:
    """A runtime_env that ships this `seqserve` package to the workers, so a cluster needs only the
    runtime packages (numpy, onnxruntime, pyarrow). Ray takes local code only in ray.init."""
    return {"py_modules": [str(Path(seqserve.__file__).parent)]}


def run_ray_job(config: JobConfig, repository: str | Path, model: str, version: int = 0, threads: int = 1,
                actors: int = 0, address: str | None = None) -> Summary:
    """Run the job on Ray: a local instance (address None), an existing cluster, or the one already
    initialised in this process (whose workers must be able to import seqserve: install it, or pass
    `runtime_env=code_env()` to ray.init). `actors`: onnxruntime actors (0: the cluster's CPUs / threads, less
    one for the reader)."""
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False, runtime_env=code_env(),
                 logging_level=logging.WARNING)
    try:
        return _run(config, repository, model, version, threads, actors)
    finally:
        if started_ray:
            ray.shutdown()


def _run(config: JobConfig, repository: str | Path, model: str, version: int, threads: int, actors: int) -> Summary:
    model_version = resolve_version(repository, model, version)
    # The driver builds the model once too: it checks the file and the requested tensors before any actor starts.
    local = OrtModel(model_version, config.tensors, threads=1)
    threads = max(1, threads)
    if actors <= 0:
        actors = max(1, int(ray.cluster_resources().get("CPU", 1) // threads) - 1)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_options.preserve_order = False
    output = JobOutput(replace(config, tensors=local.tensors), local.info, f"ray ({actors} actors)")
    try:
        dataset = ray.data.read_datasource(RecordSource(config, local.info.input_size, output.done))
        dataset = dataset.map_batches(
            OrtPredictor,
            fn_constructor_kwargs=dict(version=model_version, model_bytes=model_version.model_file.read_bytes(),
                                       tensors=local.tensors, threads=threads, batch_size=config.batch_size,
                                       max_batch_steps=config.max_batch_steps),
            batch_size=block_rows(config), batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=threads,
        )
        for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1):
            _account(output, table, local.tensors, local.arch.hidden_size)
    except KeyboardInterrupt:
        output.summary.interrupted = True
    except BatchError as exc:
        output.summary.error = str(exc)
    except ray.exceptions.RayError as exc:
        output.summary.error = f"ray: {_root_cause(exc)}"
    finally:
        output.close()
    return output.summary


def _root_cause(exc: BaseException) -> str:
    """The first line of the user-code error inside a Ray task failure."""
    cause = getattr(exc, "cause", None) or exc.__cause__
    if isinstance(cause, (BatchError, BackendError)):
        return str(cause)
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    if "No module named 'seqserve'" in text:
        text += " on the Ray workers: install seqserve there, or ray.init(runtime_env=ray_job.code_env())"
    return text
