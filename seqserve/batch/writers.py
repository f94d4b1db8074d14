"""Output writers that commit whole records, so a killed run can resume with each id exactly once.

    jsonl    one JSON object per prediction and line, appended. Each `write` is one write() of
             whole lines plus a flush; a line cut short by a kill is dropped (the file truncated
             to its last newline) when the run resumes.
    parquet  a folder of part files `part-00000.parquet`, `part-00001.parquet`, ... (read it with
             pyarrow.parquet.read_table(folder), pandas.read_parquet(folder) or ray.data.read_parquet).
             A part is written as a hidden `.part-NNNNN.parquet.inprogress` file, a row group at a
             time (pyarrow ParquetWriter), and renamed when it is complete; an unfinished part left
             by a kill is deleted on resume and its rows are predicted again. Every run starts a new
             part, so resuming never rewrites a finished one.

A prediction row: id, label, label_index, probabilities [C], true_label (when the input has
labels), and the requested tensors (context [D*H], attention [T], h_n [L*D][H], c_n [L*D][H],
outputs [T][D*H], logits [C], step_logits [T][C]).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np

try:  # the `batch` extra's JSON library
    import orjson

    HAS_ORJSON = True
except ImportError:
    HAS_ORJSON = False

from seqserve.batch.backends import Predictions
from seqserve.batch.errors import OutputError
from seqserve.batch.readers import BadRecord

OUTPUT_FORMATS = ("jsonl", "parquet")
ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE if HAS_ORJSON else 0
MATRIX_TENSORS = frozenset({"h_n", "c_n", "outputs", "step_logits"})  # 2-D per sequence
PART_NAME = "part-{:05d}.parquet"
PART_PATTERN = re.compile(r"part-(\d+)\.parquet")
INPROGRESS = ".{}.inprogress"
ROWS_PER_FILE = 100_000
ROW_GROUP_ROWS = 8192
ROW_GROUP_BYTES = 64 << 20  # a row group is written once its tensors reach this size, whatever its rows


class Writer(Protocol):
    def write(self, predictions: Predictions) -> None: ...

    def close(self) -> None: ...


def detect_output_format(path: str | Path, explicit: str | None = None) -> str:
    if explicit is not None:
        if explicit not in OUTPUT_FORMATS:
            raise OutputError(f"unknown output format {explicit!r}; choose from {', '.join(OUTPUT_FORMATS)}")
        return explicit
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in (".parquet", ".pq") or path.is_dir():
        return "parquet"
    raise OutputError(f"{path}: cannot tell the output format from {suffix!r}; use .jsonl or .parquet "
                      "or pass --output-format")


def prediction_rows(predictions: Predictions) -> Iterator[dict]:
    """Each prediction as the object its JSON Lines row holds (vectors and matrices as numpy arrays)."""
    tensors = predictions.tensors.items()
    columns = zip(predictions.ids, predictions.labels, predictions.label_index.tolist(), predictions.probabilities,
                  predictions.true_labels, strict=True)
    for i, (rid, label, index, probabilities, truth) in enumerate(columns):
        row = {"id": rid, "label": label, "label_index": index, "probabilities": probabilities}
        if truth is not None:
            row["true_label"] = truth
        for name, values in tensors:
            row[name] = values[i]
        yield row


def prediction_lines(predictions: Predictions) -> bytes:
    """One JSON Lines row per prediction. orjson writes a float32 as the shortest text that reads back as
    the same float32 (8x faster than the json module); NaN or Inf, which orjson would write as null, go
    through the json module, which writes NaN and Infinity."""
    if HAS_ORJSON and predictions.finite():
        return b"".join([orjson.dumps(row, default=np.ascontiguousarray,  # (state rows are views)
                                      option=ORJSON_OPTIONS) for row in prediction_rows(predictions)])
    return "".join(json.dumps(row, default=np.ndarray.tolist) + "\n" for row in prediction_rows(predictions)).encode()


class JsonlWriter:
    def __init__(self, path: Path, append: bool) -> None:
        self.path = path
        self.file = path.open("ab" if append else "wb")

    def write(self, predictions: Predictions) -> None:
        """Append whole lines with one write() and flush, so a kill can cut at most the last line."""
        if len(predictions):
            self.file.write(prediction_lines(predictions))
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def jsonl_done_ids(path: Path) -> set[str]:
    """Ids already in a JSON Lines output; drops a last line cut short by a kill."""
    done: set[str] = set()
    complete = 0  # bytes up to the end of the last whole line
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                break
            try:
                done.add(json.loads(raw)["id"])
            except (ValueError, KeyError, TypeError):
                raise OutputError(f"{path}:{number}: not a prediction line; is this batch_infer's output?") from None
            complete += len(raw)
    if complete < path.stat().st_size:
        with path.open("r+b") as f:
            f.truncate(complete)
    return done


def _import_pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise OutputError("Parquet output needs pyarrow: pip install 'seqserve[batch]'") from None
    return pa, pq


def parquet_schema(pa, tensors: Sequence[str]):
    vector = pa.list_(pa.float32())
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("label_index", pa.int32()),
        pa.field("probabilities", vector),
        pa.field("true_label", pa.string()),
    ]
    fields += [pa.field(t, pa.list_(vector) if t in MATRIX_TENSORS else vector) for t in tensors]
    return pa.schema(fields)


def _offsets(counts: Sequence[int]) -> np.ndarray:
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def _vector_column(pa, arrays: Sequence[np.ndarray]):
    """1-D arrays -> list<float32>."""
    values = np.concatenate(arrays).astype(np.float32, copy=False) if arrays else np.zeros(0, np.float32)
    return pa.ListArray.from_arrays(_offsets([len(a) for a in arrays]), pa.array(values, pa.float32()))


def _rows_column(pa, matrix: np.ndarray):
    """(B, C) -> list<float32> of B rows of C values."""
    offsets = np.arange(matrix.shape[0] + 1, dtype=np.int32) * matrix.shape[1]
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(matrix, np.float32).reshape(-1)))


def _matrix_column(pa, arrays: Sequence[np.ndarray]):
    """(R_i, W) arrays -> list<list<float32>>: row i holds R_i lists of W values."""
    width = arrays[0].shape[1] if arrays else 0
    rows = [a.shape[0] for a in arrays]
    flat = np.concatenate([a.reshape(-1) for a in arrays]).astype(np.float32, copy=False) if arrays else []
    inner = pa.ListArray.from_arrays(np.arange(sum(rows) + 1, dtype=np.int32) * width, pa.array(flat, pa.float32()))
    return pa.ListArray.from_arrays(_offsets(rows), inner)


@dataclass
class _OpenPart:
    """The part file being written: hidden as `.part-NNNNN.parquet.inprogress` until it is complete."""

    writer: Any  # pyarrow.parquet.ParquetWriter
    path: Path
    rows: int = 0


class ParquetWriter:
    def __init__(self, folder: Path, tensors: Sequence[str], rows_per_file: int = ROWS_PER_FILE,
                 row_group_rows: int = ROW_GROUP_ROWS, row_group_bytes: int = ROW_GROUP_BYTES) -> None:
        self.pa, self.pq = _import_pyarrow()
        self.folder = folder
        self.tensors = tuple(tensors)
        self.schema = parquet_schema(self.pa, self.tensors)
        self.rows_per_file = rows_per_file
        self.row_group_rows = row_group_rows
        self.row_group_bytes = row_group_bytes
        folder.mkdir(parents=True, exist_ok=True)
        self.next_part = 1 + max((int(m.group(1)) for p in folder.iterdir()
                                  if (m := PART_PATTERN.fullmatch(p.name))), default=-1)
        self.buffer: list[Predictions] = []
        self.buffered_rows = self.buffered_bytes = 0
        self.part: _OpenPart | None = None

    def _table(self, p: Predictions):
        pa = self.pa
        columns = [
            pa.array(p.ids, pa.string()),
            pa.array(p.labels, pa.string()),
            pa.array(p.label_index, pa.int32()),
            _rows_column(pa, p.probabilities),
            pa.array(p.true_labels, pa.string()),
        ]
        for t in self.tensors:
            column = _matrix_column if t in MATRIX_TENSORS else _vector_column
            columns.append(column(pa, p.tensors[t]))
        return pa.Table.from_arrays(columns, schema=self.schema)

    def write(self, predictions: Predictions) -> None:
        """Buffer; write a row group once it would fill the part, or holds row_group_rows rows or
        row_group_bytes of tensors."""
        if not len(predictions):
            return
        self.buffer.append(predictions)
        self.buffered_rows += len(predictions)
        self.buffered_bytes += predictions.nbytes
        part_rows = self.part.rows if self.part is not None else 0
        group_rows = min(self.row_group_rows, self.rows_per_file - part_rows)
        if self.buffered_rows >= group_rows or self.buffered_bytes >= self.row_group_bytes:
            self._flush()

    def _flush(self) -> None:
        merged = Predictions.concat(self.buffer)
        self.buffer, self.buffered_rows, self.buffered_bytes = [], 0, 0
        start = 0
        while start < len(merged):
            part = self.part if self.part is not None else self._open_part()
            rows = min(len(merged) - start, self.rows_per_file - part.rows)
            part.writer.write_table(self._table(merged.slice(start, start + rows)), row_group_size=rows)
            start += rows
            part.rows += rows
            if part.rows >= self.rows_per_file:
                self._commit(part)

    def _open_part(self) -> _OpenPart:
        final = self.folder / PART_NAME.format(self.next_part)
        path = self.folder / INPROGRESS.format(final.name)
        self.part = _OpenPart(self.pq.ParquetWriter(path, self.schema), path)
        self.next_part += 1
        return self.part

    def _commit(self, part: _OpenPart) -> None:
        part.writer.close()
        os.replace(part.path, self.folder / part.path.name[1 : -len(".inprogress")])
        self.part = None

    def close(self) -> None:
        """Write what is buffered and finish the part (also after an error, so committed work stays)."""
        if self.buffer:
            self._flush()
        if self.part is not None:
            self._commit(self.part)


def parquet_done_ids(folder: Path, tensors: Sequence[str]) -> set[str]:
    """Ids in the finished parts of a Parquet output; deletes parts a killed run left unfinished.
    The parts must have the columns this run writes (the same --include), or the folder would not
    read back as one table."""
    pa, pq = _import_pyarrow()
    expected = parquet_schema(pa, tensors)
    done: set[str] = set()
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".part-") and path.name.endswith(".inprogress"):
            path.unlink()
        elif PART_PATTERN.fullmatch(path.name):
            schema = pq.read_schema(path)
            if schema.names != expected.names:
                raise OutputError(f"{path}: has columns {schema.names}, this run writes {expected.names}; "
                                  "resume with the --include of the first run")
            done.update(pq.read_table(path, columns=["id"]).column("id").to_pylist())
    return done


def open_writer(path: Path, fmt: str, tensors: Sequence[str], resume: bool, overwrite: bool,
                rows_per_file: int = ROWS_PER_FILE) -> tuple[Writer, set[str]]:
    """A writer for the output, and the ids it already holds (resume only)."""
    done: set[str] = set()
    if fmt == "jsonl":
        if path.is_dir():
            raise OutputError(f"{path}: is a folder; JSON Lines output is a file")
        if path.exists() and not (resume or overwrite):
            raise OutputError(f"{path}: exists; pass --resume to continue it or --overwrite to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume and path.exists():
            done = jsonl_done_ids(path)
        return JsonlWriter(path, append=resume), done
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: is a file; Parquet output is a folder of part files")
    if path.is_dir():
        ours = [p for p in path.iterdir() if PART_PATTERN.fullmatch(p.name) or p.name.endswith(".inprogress")]
        if ours and not (resume or overwrite):
            raise OutputError(f"{path}: holds predictions; pass --resume to continue or --overwrite to replace them")
        if overwrite:
            for p in ours:
                p.unlink()
        elif resume:
            done = parquet_done_ids(path, tensors)
    return ParquetWriter(path, tensors, rows_per_file=rows_per_file), done


class ErrorLog:
    """The errors file: one JSON object per failed record (id, index, line, reason), rewritten each run
    and created at the first failure (a run with none leaves no errors file, not an empty one)."""

    def __init__(self, path: Path) -> None:
        path.unlink(missing_ok=True)  # an earlier run's failures are not this run's
        self.path = path
        self.file: TextIO | None = None
        self.count = 0

    def write(self, bad: BadRecord) -> None:
        if self.file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = self.path.open("w", encoding="utf-8")
        self.file.write(json.dumps({"id": bad.id, "index": bad.index, "line": bad.line, "reason": bad.reason}) + "\n")
        self.file.flush()
        self.count += 1

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
