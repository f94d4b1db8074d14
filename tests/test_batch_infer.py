"""batch_infer.py and seqserve.batch: every input format, local / remote / Ray against direct
onnxruntime, resume after a kill, bad records, the JapaneseVowels accuracy, bounded memory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(ROOT), str(ROOT / "tests")) if p not in sys.path]

from reference import class_labels, latest_folder  # noqa: E402
from reference import reference as onnx_reference  # noqa: E402
from servers import threaded_server  # noqa: E402

from seqserve.batch import backends, pipeline, readers  # noqa: E402
from seqserve.batch import cli as batch_infer  # noqa: E402
from seqserve.batch.backends import LocalBackend, Predictions, RemoteBackend  # noqa: E402
from seqserve.batch.errors import BackendError  # noqa: E402
from seqserve.batch.pipeline import JobConfig, run_job  # noqa: E402
from seqserve.batch.readers import each_record, read_records  # noqa: E402
from seqserve.batch.writers import prediction_lines  # noqa: E402
from seqserve.channel import Retries  # noqa: E402
from seqserve.model.data import dataset_dir  # noqa: E402
from seqserve.ts_format import iter_ts  # noqa: E402

REPOSITORY = ROOT / "model_repository"
MODEL = "jv_bilstm_attn"
PROBABILITY_ATOL = 1e-5
TENSOR_ATOL = 1e-4  # per-step outputs and states: padded batch vs one sequence alone
TEST_TS = dataset_dir() / "JapaneseVowels_TEST.ts"
EXIT_FAILED_RECORDS = 3


# ---------------------------------------------------------------- reference: onnxruntime, one sequence at a time

class Reference:
    """The onnxruntime reference (tests/reference.py) on one unpadded sequence at a time: what every backend
    must reproduce."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.labels = class_labels(model, REPOSITORY)
        self.cache: dict[bytes, dict[str, np.ndarray]] = {}

    def outputs(self, steps: np.ndarray) -> dict[str, np.ndarray]:
        key = steps.tobytes()
        if key not in self.cache:
            self.cache[key] = onnx_reference(self.model, [steps.astype(np.float32)], repository=REPOSITORY)
        return self.cache[key]

    def predict(self, steps: np.ndarray) -> tuple[str, np.ndarray]:
        logits = self.outputs(steps)["logits"][0].astype(np.float64)
        e = np.exp(logits - logits.max())
        return self.labels[int(logits.argmax())], e / e.sum()


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference(MODEL)


@pytest.fixture(scope="module")
def cases() -> list:
    return list(iter_ts(TEST_TS))


@pytest.fixture(scope="module")
def sample(cases) -> list[tuple[str, np.ndarray, str]]:
    """60 JapaneseVowels test sequences as (id, steps, label), every length class."""
    return [(f"jv-{c.index}", c.steps, c.label) for c in cases[::6]][:60]


def check_against_reference(rows: list[dict], reference: Reference, by_id: dict[str, np.ndarray]) -> None:
    assert sorted(r["id"] for r in rows) == sorted(by_id), "every id exactly once"
    for row in rows:
        label, probabilities = reference.predict(by_id[row["id"]])
        assert row["label"] == label, row["id"]
        np.testing.assert_allclose(row["probabilities"], probabilities, atol=PROBABILITY_ATOL, err_msg=row["id"])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- input writers for every format

def write_jsonl(path: Path, sample) -> None:
    with path.open("w") as f:
        for rid, steps, label in sample:
            f.write(json.dumps({"id": rid, "steps": steps.tolist(), "label": label}) + "\n")


def write_parquet(path: Path, sample) -> None:
    table = pa.table({"id": [s[0] for s in sample], "steps": [s[1].tolist() for s in sample],
                      "label": [s[2] for s in sample]})
    pq.write_table(table, path, row_group_size=16)


def write_npz_concatenated(path: Path, sample) -> None:
    np.savez_compressed(path, steps=np.concatenate([s[1] for s in sample]),
                        lengths=np.array([len(s[1]) for s in sample]), ids=np.array([s[0] for s in sample]),
                        labels=np.array([s[2] for s in sample]))


def write_npz_padded(path: Path, sample) -> None:
    lengths = np.array([len(s[1]) for s in sample])
    x = np.zeros((len(sample), lengths.max(), sample[0][1].shape[1]), dtype=np.float64)
    for i, (_, steps, _) in enumerate(sample):
        x[i, : len(steps)] = steps
    np.savez(path, x=x, lengths=lengths, ids=np.array([s[0] for s in sample]))


def write_ts(path: Path, sample) -> None:
    labels = sorted({s[2] for s in sample})
    lines = ["@problemName sample", "@timeStamps false", "@missing false", "@univariate false",
             f"@dimensions {sample[0][1].shape[1]}", "@equalLength false",
             f"@classLabel true {' '.join(labels)}", "@data"]
    for _, steps, label in sample:
        lines.append(":".join(",".join(repr(float(v)) for v in column) for column in steps.T) + f":{label}")
    path.write_text("\n".join(lines) + "\n")


WRITERS = {"jsonl": (write_jsonl, "in.jsonl"), "parquet": (write_parquet, "in.parquet"),
           "npz": (write_npz_concatenated, "in.npz"), "npz-padded": (write_npz_padded, "padded.npz"),
           "ts": (write_ts, "in.ts")}


def run_cli(*args: str) -> int:
    return batch_infer.main([*map(str, args), "--no-progress", "--model-repository", str(REPOSITORY)])


# ---------------------------------------------------------------- formats

@pytest.mark.parametrize("fmt", list(WRITERS))
def test_every_input_format_gives_the_reference_predictions(tmp_path, fmt, sample, reference):
    write, name = WRITERS[fmt]
    source = tmp_path / name
    write(source, sample)
    out = tmp_path / "preds.jsonl"
    summary = tmp_path / "summary.json"
    assert run_cli("--model", MODEL, "--input", source, "--output", out, "--summary-json", summary,
                   "--batch-size", "8", "--chunk-size", "24") == 0
    rows = read_jsonl(out)
    # .ts has no ids: its records are numbered from 0.
    ids = [str(i) for i in range(len(sample))] if fmt == "ts" else [s[0] for s in sample]
    check_against_reference(rows, reference, {i: s[1] for i, s in zip(ids, sample, strict=True)})
    if fmt != "npz-padded":  # the padded sample has no labels
        truth = dict(zip(ids, (s[2] for s in sample), strict=True))
        assert all(r["true_label"] == truth[r["id"]] for r in rows)
    report = json.loads(summary.read_text())
    assert (report["read"], report["written"], report["failed"], report["exit_status"]) == (60, 60, 0, 0)
    assert not (tmp_path / "preds.jsonl.errors.jsonl").exists()  # no failures: no errors file


def test_parquet_folder_input_and_output_with_tensors(tmp_path, sample, reference):
    """Parquet in (a folder of files) and out (a folder of parts), with context, h_n and per-step outputs."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_parquet(folder / "a.parquet", sample[:25])
    write_parquet(folder / "b.parquet", sample[25:])
    out = tmp_path / "preds.parquet"
    assert run_cli("--model", MODEL, "--input", folder, "--output", out, "--include", "context", "h_n", "outputs",
                   "attention", "--rows-per-file", "16", "--batch-size", "8") == 0
    assert sorted(p.name for p in out.iterdir()) == [f"part-{i:05d}.parquet" for i in range(4)]
    rows = pq.read_table(out).to_pylist()
    by_id = {s[0]: s[1] for s in sample}
    check_against_reference(rows, reference, by_id)
    for row in rows:
        want = reference.outputs(by_id[row["id"]])
        length = len(by_id[row["id"]])
        np.testing.assert_allclose(row["context"], want["context"][0], atol=TENSOR_ATOL)
        np.testing.assert_allclose(row["h_n"], want["h_n"][:, 0], atol=TENSOR_ATOL)
        np.testing.assert_allclose(row["outputs"], want["outputs"][0, :length], atol=TENSOR_ATOL)
        np.testing.assert_allclose(row["attention"], want["attention"][0, :length], atol=TENSOR_ATOL)


def test_jsonl_output_tensors_and_streaming_model(tmp_path, sample):
    """A unidirectional LSTM (h0/c0 inputs, c_n output) with tensors in JSON Lines."""
    source = tmp_path / "in.jsonl"
    write_jsonl(source, sample[:20])
    out = tmp_path / "preds.jsonl"
    assert run_cli("--model", "jv_lstm_stream", "--input", source, "--output", out,
                   "--include", "h_n", "c_n", "outputs") == 0
    reference = Reference("jv_lstm_stream")
    rows = read_jsonl(out)
    by_id = {s[0]: s[1] for s in sample[:20]}
    check_against_reference(rows, reference, by_id)
    for row in rows:
        want = reference.outputs(by_id[row["id"]])
        np.testing.assert_allclose(row["c_n"], want["c_n"][:, 0], atol=TENSOR_ATOL)
        assert np.asarray(row["outputs"]).shape == (len(by_id[row["id"]]), want["outputs"].shape[2])


def test_readers_are_lazy(tmp_path, sample):
    """The first records come out while the rest of the input is still being written: the reader of a
    pipe holds a block of lines (~1 MB) at a time, never the whole input."""
    source = tmp_path / "in.jsonl"
    os.mkfifo(source)
    lines = [json.dumps({"id": f"{i}", "steps": sample[i % len(sample)][1].tolist()}) + "\n" for i in range(1000)]
    first_part = "".join(lines * 2)  # ~2x the reader's block
    assert len(first_part) > 2 * readers.JSONL_BLOCK_BYTES
    go_on = threading.Event()
    waited_in_vain = []

    def write() -> None:
        with source.open("w") as f:
            f.write(first_part)
            f.flush()
            if not go_on.wait(30):  # the reader wants the whole input before its first record
                waited_in_vain.append(True)
            f.write("{not json, and only written once the first records are out\n")

    writer = threading.Thread(target=write)
    writer.start()
    try:
        items = read_records(source, "jsonl")
        first = next(items)
        go_on.set()
        assert not waited_in_vain
        first_record = next(each_record([first]))
        assert first_record.id == "0"
        np.testing.assert_array_equal(first_record.steps, sample[0][1])
        assert sum(1 for _ in each_record(items)) + len(first) == 2001  # the rest, the bad line last
    finally:
        go_on.set()
        writer.join(60)


# ---------------------------------------------------------------- backends agree

def test_local_and_remote_agree_with_onnxruntime(tmp_path, sample, reference):
    source = tmp_path / "in.npz"
    write_npz_concatenated(source, sample)
    by_id = {s[0]: s[1] for s in sample}
    local = LocalBackend(REPOSITORY, MODEL, tensors=["context"])
    summary = run_job(JobConfig(input=source, output=tmp_path / "local.jsonl", tensors=("context",), batch_size=7),
                      local)
    assert summary.exit_status == 0
    local_rows = {r["id"]: r for r in read_jsonl(tmp_path / "local.jsonl")}
    check_against_reference(list(local_rows.values()), reference, by_id)

    with threaded_server() as server:
        remote = RemoteBackend(server.target, MODEL, tensors=["context"], streams=3)
        try:
            summary = run_job(JobConfig(input=source, output=tmp_path / "remote.jsonl", tensors=("context",),
                                        batch_size=7), remote, "remote")
        finally:
            remote.close()
    assert summary.exit_status == 0
    remote_rows = read_jsonl(tmp_path / "remote.jsonl")
    check_against_reference(remote_rows, reference, by_id)
    for row in remote_rows:
        assert row["label"] == local_rows[row["id"]]["label"]
        np.testing.assert_allclose(row["context"], local_rows[row["id"]]["context"], atol=TENSOR_ATOL)


def test_remote_rejections_fail_only_their_records(tmp_path, sample, reference):
    """The server refuses sequences over its max_sequence_length: those fail, the rest of their batch not."""
    long_ids = {s[0] for s in sample if len(s[1]) > 20}
    assert 0 < len(long_ids) < len(sample)
    source = tmp_path / "in.jsonl"
    write_jsonl(source, sample)
    out = tmp_path / "preds.jsonl"
    with threaded_server(max_sequence_length=20) as server:
        code = run_cli("--model", MODEL, "--input", source, "--output", out, "--server", server.target,
                       "--streams", "2", "--batch-size", "16")
    assert code == EXIT_FAILED_RECORDS
    errors = read_jsonl(tmp_path / "preds.jsonl.errors.jsonl")
    assert {e["id"] for e in errors} == long_ids
    assert all("max_sequence_length" in e["reason"] for e in errors)
    check_against_reference(read_jsonl(out), reference, {s[0]: s[1] for s in sample if s[0] not in long_ids})


def test_unreachable_server_stops_the_run(tmp_path, sample):
    source = tmp_path / "in.jsonl"
    write_jsonl(source, sample[:3])
    with pytest.raises(BackendError, match="UNAVAILABLE"):
        RemoteBackend("127.0.0.1:1", MODEL, retries=Retries(1, initial_backoff_s=0.01), timeout=2)
    assert run_cli("--model", MODEL, "--input", source, "--output", tmp_path / "p.jsonl", "--server",
                   "127.0.0.1:1", "--retries", "0", "--timeout", "2") == pipeline.EXIT_FATAL


def loopback_only_namespace() -> list[str]:
    """A command prefix that runs its command in a new network namespace holding only `lo` (up).

    A local Ray instance connects its own processes through the machine's outward address even when
    told 127.0.0.1; in a namespace whose only interface is loopback, it has no other address to use.
    """
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("Ray test needs unshare and ip (util-linux, iproute2) to run Ray on loopback only")
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"Ray test runs Ray in its own network namespace (loopback only), which needs root or "
                    f"CAP_SYS_ADMIN here: `unshare -n` failed: {probe.stderr.strip()}")
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "netns"]


def test_ray_agrees_with_onnxruntime(tmp_path, sample, reference):
    pytest.importorskip("ray", reason="the 'ray' extra is not installed: pip install -e '.[ray]'")
    netns = loopback_only_namespace()
    source = tmp_path / "in.jsonl"
    write_jsonl(source, sample)
    with source.open("a") as f:
        f.write('{"id": "bad-nan", "steps": [[NaN, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]}\n')
        f.write("not json\n")
        f.write(json.dumps({"id": sample[0][0], "steps": sample[0][1].tolist()}) + "\n")  # a duplicate id
    job = subprocess.run(
        [*netns, sys.executable, str(ROOT / "batch_infer.py"), "--model", MODEL, "--model-repository", REPOSITORY,
         "--input", source, "--output", tmp_path / "ray.parquet", "--include", "h_n", "outputs",
         "--batch-size", "8", "--chunk-size", "16", "--ray", "--ray-actors", "1", "--no-progress",
         "--summary-json", tmp_path / "summary.json"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert job.returncode == EXIT_FAILED_RECORDS, job.stdout + job.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["error"] is None, summary["error"]
    assert (summary["read"], summary["written"], summary["failed"]) == (63, 60, 3)
    rows = pq.read_table(tmp_path / "ray.parquet").to_pylist()
    by_id = {s[0]: s[1] for s in sample}
    check_against_reference(rows, reference, by_id)
    for row in rows:
        want = reference.outputs(by_id[row["id"]])
        np.testing.assert_allclose(row["h_n"], want["h_n"][:, 0], atol=TENSOR_ATOL)
        np.testing.assert_allclose(row["outputs"], want["outputs"][0, : len(by_id[row["id"]])], atol=TENSOR_ATOL)
    errors = read_jsonl(tmp_path / "ray.parquet.errors.jsonl")
    assert sorted(e["line"] for e in errors) == [61, 62, 63]
    assert {e["id"] for e in errors} == {"bad-nan", None, sample[0][0]}


# ---------------------------------------------------------------- resume after a kill

def _start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "batch_infer.py"), *map(str, args), "--no-progress",
                             "--model-repository", str(REPOSITORY)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"finished before it could be killed: {proc.communicate()}"
        assert time.monotonic() < deadline, "no progress to kill"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _tiled_jsonl(path: Path, cases, count: int) -> list[str]:
    ids = []
    with path.open("w") as f:
        for i in range(count):
            steps = cases[i % len(cases)].steps
            ids.append(f"r{i:05d}")
            f.write(json.dumps({"id": ids[-1], "steps": steps.tolist()}) + "\n")
    return ids


def test_resume_after_a_killed_run_writes_each_id_once(tmp_path, cases):
    source = tmp_path / "in.jsonl"
    ids = _tiled_jsonl(source, cases, 3000)
    out = tmp_path / "preds.jsonl"
    # One sequence per call keeps the run slow enough to kill in the middle.
    proc = _start("--model", MODEL, "--input", source, "--output", out, "--batch-size", "1", "--chunk-size", "16")
    _kill_when(proc, lambda: out.exists() and out.stat().st_size > 100_000)
    done = out.read_text().count("\n")  # whole lines; the kill may have cut the last one
    assert 0 < done < len(ids)
    with out.open("a") as f:
        f.write('{"id": "r99999", "label": "1", "probabil')  # (another) line cut short by the kill

    resumed = _start("--model", MODEL, "--input", source, "--output", out, "--resume",
                     "--summary-json", tmp_path / "summary.json")
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr
    rows = read_jsonl(out)
    assert sorted(r["id"] for r in rows) == ids, "each id exactly once"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["skipped"], summary["written"]) == (done, len(ids) - done)


def test_resume_parquet_after_a_killed_run(tmp_path, cases):
    source = tmp_path / "in.jsonl"
    ids = _tiled_jsonl(source, cases, 3000)
    out = tmp_path / "preds.parquet"
    proc = _start("--model", MODEL, "--input", source, "--output", out, "--batch-size", "1", "--chunk-size", "16",
                  "--rows-per-file", "200")
    _kill_when(proc, lambda: out.exists() and len(list(out.glob("part-*.parquet"))) >= 2)
    parts_before = sorted(p.name for p in out.glob("part-*.parquet"))
    resumed = _start("--model", MODEL, "--input", source, "--output", out, "--resume")
    _, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "unfinished parts are removed"
    assert set(parts_before) <= {p.name for p in out.glob("part-*.parquet")}, "finished parts are kept"
    assert sorted(pq.read_table(out, columns=["id"]).column("id").to_pylist()) == ids


def test_sigterm_stops_cleanly_and_resume_finishes(tmp_path, cases):
    """docker stop: SIGTERM ends the run between writes (exit 130), every line whole."""
    source = tmp_path / "in.jsonl"
    ids = _tiled_jsonl(source, cases, 3000)
    out = tmp_path / "preds.jsonl"
    proc = _start("--model", MODEL, "--input", source, "--output", out, "--batch-size", "1", "--chunk-size", "16")
    deadline = time.monotonic() + 60
    while not (out.exists() and out.stat().st_size > 50_000):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "--resume" in stdout
    assert out.read_text().endswith("\n")
    assert _start("--model", MODEL, "--input", source, "--output", out, "--resume").wait(120) == 0
    assert sorted(r["id"] for r in read_jsonl(out)) == ids


def test_existing_output_needs_resume_or_overwrite(tmp_path, sample):
    source = tmp_path / "in.jsonl"
    write_jsonl(source, sample[:5])
    out = tmp_path / "preds.jsonl"
    assert run_cli("--model", MODEL, "--input", source, "--output", out) == 0
    assert run_cli("--model", MODEL, "--input", source, "--output", out) == pipeline.EXIT_FATAL
    assert run_cli("--model", MODEL, "--input", source, "--output", out, "--resume") == 0
    assert run_cli("--model", MODEL, "--input", source, "--output", out, "--overwrite") == 0
    assert len(read_jsonl(out)) == 5


# ---------------------------------------------------------------- bad records

def test_bad_records_go_to_the_errors_file_and_the_run_goes_on(tmp_path, sample, reference):
    good = [json.dumps({"id": rid, "steps": steps.tolist()}) for rid, steps, _ in sample[:4]]
    bad = [
        ("{this is not json", None, "invalid JSON"),
        (json.dumps({"id": "no-steps", "values": [[1.0] * 12]}), "no-steps", "missing field 'steps'"),
        (json.dumps({"id": "eleven", "steps": [[1.0] * 11] * 3}), "eleven",
         "has 11 features per step, the model expects 12"),
        ('{"id": "nan", "steps": [[1,2,3,4,5,6,7,8,9,10,11,12], [1,2,3,NaN,5,6,7,8,9,10,11,12]]}', "nan",
         "contains NaN or Inf (first at step 1)"),
        (json.dumps({"id": "empty", "steps": []}), "empty", "empty sequence"),
        (json.dumps({"id": "ragged", "steps": [[1.0] * 12, [1.0] * 5]}), "ragged", "steps: not a list"),
        (json.dumps({"id": sample[0][0], "steps": sample[0][1].tolist()}), sample[0][0], "duplicate id"),
        (json.dumps({"id": ["a", "list"], "steps": [[1.0] * 12]}), None, "id: must be a string or an integer"),
        ("[1, 2, 3]", None, "expected a JSON object"),
    ]
    lines = good[:2] + [b[0] for b in bad[:5]] + good[2:] + [""] + [b[0] for b in bad[5:]]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "preds.jsonl"
    summary = tmp_path / "summary.json"
    assert run_cli("--model", MODEL, "--input", source, "--output", out, "--summary-json", summary) == \
        EXIT_FAILED_RECORDS
    check_against_reference(read_jsonl(out), reference, {s[0]: s[1] for s in sample[:4]})
    errors = read_jsonl(tmp_path / "preds.jsonl.errors.jsonl")
    assert len(errors) == len(bad)
    line_of = {line: number for number, line in enumerate(lines, start=1)}
    for error, (line, rid, reason) in zip(sorted(errors, key=lambda e: e["line"]), bad, strict=True):
        assert error["line"] == line_of[line]
        assert error["id"] == rid
        assert reason in error["reason"], (reason, error["reason"])
    report = json.loads(summary.read_text())
    assert (report["read"], report["written"], report["failed"], report["exit_status"]) == \
        (13, 4, 9, EXIT_FAILED_RECORDS)


def test_bad_records_in_binary_formats(tmp_path, sample):
    ok = sample[0][1]
    nan = ok.copy()
    nan[2, 3] = np.nan
    table = pa.table({"id": ["ok", "nan", "null", "ragged", "wide"],
                      "steps": [ok.tolist(), nan.tolist(), None, [[1.0] * 12, [1.0] * 3], [[1.0] * 13]]})
    pq.write_table(table, tmp_path / "in.parquet")
    assert run_cli("--model", MODEL, "--input", tmp_path / "in.parquet", "--output", tmp_path / "p.jsonl") == \
        EXIT_FAILED_RECORDS
    assert [r["id"] for r in read_jsonl(tmp_path / "p.jsonl")] == ["ok"]
    reasons = {e["id"]: e["reason"] for e in read_jsonl(tmp_path / "p.jsonl.errors.jsonl")}
    assert reasons == {"nan": "contains NaN or Inf (first at step 2)", "null": "steps: null",
                       "ragged": "steps: step 1 has 3 values, step 0 has 12",
                       "wide": "has 13 features per step, the model expects 12"}

    np.savez(tmp_path / "in.npz", steps=np.concatenate([ok, nan]), lengths=np.array([len(ok), 0, len(nan)]))
    assert run_cli("--model", MODEL, "--input", tmp_path / "in.npz", "--output", tmp_path / "n.jsonl") == \
        EXIT_FAILED_RECORDS
    assert [r["id"] for r in read_jsonl(tmp_path / "n.jsonl")] == ["0"]
    assert {e["id"]: e["reason"][:14] for e in read_jsonl(tmp_path / "n.jsonl.errors.jsonl")} == \
        {"1": "empty sequence", "2": "contains NaN o"}


def _faulty_records(cases, count: int) -> list[tuple[str, np.ndarray, str]]:
    """`count` JapaneseVowels records spanning several reader blocks, with every fault screening catches:
    duplicate ids (in one block and across blocks), an empty id, an empty sequence, NaN and Inf."""
    records = [(f"r{i:05d}", cases[i % len(cases)].steps.copy(), cases[i % len(cases)].label) for i in range(count)]
    records[10] = (records[3][0], *records[10][1:])  # duplicate within the first block
    records[1500] = (records[20][0], *records[1500][1:])  # duplicate of a record two blocks back
    records[700] = ("", *records[700][1:])
    records[1100] = (records[1100][0], np.zeros((0, 12), np.float32), records[1100][2])
    records[1800][1][2, 5] = np.nan
    records[2100][1][0, 0] = np.inf
    return records


def test_block_readers_screen_like_the_record_reader(tmp_path, cases, monkeypatch):
    """npz, Parquet and JSON Lines (simdjson's path) are read as blocks of many records, JSON Lines' exact
    path one record at a time: the same records with the same faults give the same predictions, errors and
    counts, also on --resume."""
    records = _faulty_records(cases, 2300)
    jsonl = tmp_path / "in.jsonl"
    with jsonl.open("w") as f:
        for rid, steps, label in records:
            f.write(json.dumps({"id": rid, "steps": steps.tolist(), "label": label}) + "\n")
    sources = {"jsonl-blocks": jsonl}
    for fmt in ("parquet", "npz", "npz-padded"):
        write, name = WRITERS[fmt]
        sources[fmt] = tmp_path / name
        write(sources[fmt], records)
    sources["npz-stored"] = tmp_path / "stored.npz"  # not compressed: read as views of the mapped file
    np.savez(sources["npz-stored"], steps=np.concatenate([r[1] for r in records]),
             lengths=np.array([len(r[1]) for r in records]), ids=np.array([r[0] for r in records]),
             labels=np.array([r[2] for r in records]))

    def job(source: Path, out: Path, *extra: str) -> tuple[dict, dict, dict]:
        summary = out.with_suffix(".summary.json")
        run_cli("--model", MODEL, "--input", source, "--output", out, "--summary-json", summary, *extra)
        rows = {r["id"]: r for r in read_jsonl(out)}
        errors = sorted((e["index"], e["id"], e["reason"]) for e in read_jsonl(Path(f"{out}.errors.jsonl")))
        counts = json.loads(summary.read_text())
        return rows, errors, {k: counts[k] for k in ("read", "written", "failed", "skipped", "exit_status")}

    with monkeypatch.context() as exact:
        exact.setattr(readers, "simdjson", None)
        want_rows, want_errors, want_counts = job(jsonl, tmp_path / "jsonl.jsonl")
    assert want_counts == {"read": 2300, "written": 2294, "failed": 6, "skipped": 0,
                           "exit_status": EXIT_FAILED_RECORDS}
    for fmt, source in sources.items():
        rows, errors, counts = job(source, tmp_path / f"{fmt}.jsonl")
        assert (errors, counts) == (want_errors, want_counts), fmt
        assert rows.keys() == want_rows.keys(), fmt
        for rid, row in rows.items():
            assert row["label"] == want_rows[rid]["label"], (fmt, rid)
            assert row.get("true_label", want_rows[rid]["true_label"]) == want_rows[rid]["true_label"]  # padded: none
            np.testing.assert_allclose(row["probabilities"], want_rows[rid]["probabilities"], atol=PROBABILITY_ATOL)

    for fmt in ("parquet", "npz"):  # resume: the first 1,500 lines' predictions are already in the output
        out = tmp_path / f"resumed-{fmt}.jsonl"
        out.write_text("".join(line + "\n" for line in (tmp_path / "jsonl.jsonl").read_text().splitlines()[:1500]))
        rows, _, counts = job(sources[fmt], out, "--resume")
        assert rows.keys() == want_rows.keys(), fmt
        assert (counts["skipped"], counts["written"]) == (1500, 2294 - 1500), fmt


def test_padded_npz_lengths_outside_the_padding_fail_their_records(tmp_path, sample):
    steps = sample[0][1]
    x = np.zeros((3, len(steps), 12), np.float32)
    x[:] = steps
    np.savez(tmp_path / "in.npz", x=x, lengths=np.array([-1, len(steps), len(steps) + 1]),
             ids=np.array(["low", "ok", "high"]))
    assert run_cli("--model", MODEL, "--input", tmp_path / "in.npz", "--output", tmp_path / "p.jsonl") == \
        EXIT_FAILED_RECORDS
    assert [r["id"] for r in read_jsonl(tmp_path / "p.jsonl")] == ["ok"]
    assert {e["id"]: e["reason"] for e in read_jsonl(tmp_path / "p.jsonl.errors.jsonl")} == {
        "low": f"lengths: -1 is outside 0..{len(steps)}",
        "high": f"lengths: {len(steps) + 1} is outside 0..{len(steps)}"}


def test_json_lines_rows_give_back_the_same_float32(tmp_path):
    """Rows read back exactly (float32 -> text -> float32), state rows that are views included; a NaN is
    written as NaN, as Python's json writes it (never null)."""
    rng = np.random.default_rng(0)
    probabilities = rng.random((5, 9), dtype=np.float32)  # (B, C)
    states = rng.standard_normal((4, 5, 3), dtype=np.float32).transpose(1, 0, 2)  # (B, L*D, H) views, not contiguous
    predictions = Predictions([f"id-{i}" for i in range(5)], ["1"] * 5, np.zeros(5, np.int64), probabilities,
                              [None, "2", None, None, "1"], {"h_n": list(states)})
    rows = [json.loads(line) for line in prediction_lines(predictions).splitlines()]
    assert [r["id"] for r in rows] == [f"id-{i}" for i in range(5)]
    assert [r.get("true_label") for r in rows] == [None, "2", None, None, "1"]
    np.testing.assert_array_equal(np.array([r["probabilities"] for r in rows], np.float32), probabilities)
    np.testing.assert_array_equal(np.array([r["h_n"] for r in rows], np.float32), states)

    probabilities[1, 2] = np.nan
    line = prediction_lines(predictions).splitlines()[1]
    assert b"NaN" in line and np.isnan(json.loads(line)["probabilities"][2])


def test_input_problems_stop_the_run(tmp_path, capsys):
    assert run_cli("--model", MODEL, "--input", tmp_path / "missing.jsonl", "--output", tmp_path / "p.jsonl") == 1
    (tmp_path / "in.txt").write_text("a,b\n")
    assert run_cli("--model", MODEL, "--input", tmp_path / "in.txt", "--output", tmp_path / "p.jsonl") == 1
    np.savez(tmp_path / "wrong.npz", values=np.zeros(3))
    assert run_cli("--model", MODEL, "--input", tmp_path / "wrong.npz", "--output", tmp_path / "w.jsonl") == 1
    assert run_cli("--model", "no_such_model", "--input", tmp_path / "in.txt", "--output", tmp_path / "p.jsonl") == 1
    err = capsys.readouterr().err
    assert "no such file" in err and "cannot tell the format" in err and "'steps' + 'lengths'" in err
    assert "no_such_model" in err


# ---------------------------------------------------------------- accuracy, memory, CLI

def test_japanese_vowels_test_file_reproduces_the_metadata_accuracy(tmp_path, cases):
    metadata = json.loads((latest_folder(MODEL, REPOSITORY) / "metadata.json").read_text())
    summary = tmp_path / "summary.json"
    assert run_cli("--model", MODEL, "--input", TEST_TS, "--output", tmp_path / "preds.jsonl",
                   "--summary-json", summary) == 0
    report = json.loads(summary.read_text())
    expected = metadata["training"]["test_accuracy"]
    assert report["labelled"] == len(cases) == metadata["training"]["test_sequences"]
    assert report["correct"] == round(expected * len(cases))
    assert abs(report["accuracy"] - expected) < 1e-9


# VmHWM, this process's peak RSS (ru_maxrss would count the pytest process it was forked from).
MEMORY_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
from seqserve.batch import cli as batch_infer
code = batch_infer.main(sys.argv[2:])
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))  # KiB
sys.exit(code)
"""


def _peak_rss_kib(source: Path, out: Path) -> int:
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(ROOT), "--model", MODEL, "--input", str(source),
                           "--output", str(out), "--no-progress", "--chunk-size", "1024",
                           "--model-repository", str(REPOSITORY)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1])


def test_memory_stays_bounded_whatever_the_input_size(tmp_path, cases):
    """Peak RSS for a ~180 MB input is about that for an ~12 MB one: memory follows the chunk size,
    not the input. Only the set of ids seen grows with it (~120 bytes an id, ~5 MB here); holding the
    extra records' steps alone would add their float32 bytes (~26 MB), and the growth must stay under
    half of that (the inference threads' allocations also move peak RSS by a few MB between runs)."""
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    mean_line = np.mean([len(json.dumps({"id": "r00000", "steps": c.steps.tolist()})) + 1 for c in cases])
    _tiled_jsonl(small, cases, 3000)
    count = int(180_000_000 / mean_line)
    _tiled_jsonl(large, cases, count)
    small_kib, large_kib = small.stat().st_size // 1024, large.stat().st_size // 1024
    assert large_kib > 170_000
    baseline = _peak_rss_kib(small, tmp_path / "small-out.jsonl")
    peak = _peak_rss_kib(large, tmp_path / "large-out.jsonl")
    assert len(read_jsonl(tmp_path / "large-out.jsonl")) == count
    print(f"peak RSS {baseline} KiB for {small_kib} KiB of JSON Lines, {peak} KiB for {large_kib} KiB")
    steps_kib = sum(cases[i % len(cases)].steps.size * 4 for i in range(3000, count)) / 1024  # float32
    assert steps_kib > 20_000
    assert peak - baseline < steps_kib / 2, f"peak RSS grew {peak - baseline} KiB, the extra steps are {steps_kib:.0f}"


def test_batch_job_needs_neither_torch_nor_pyarrow_for_jsonl(tmp_path, sample):
    source = tmp_path / "in.jsonl"
    write_jsonl(source, sample[:5])
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import batch_infer; "
             "code = batch_infer.main(sys.argv[2:]); "
             "print(sorted(m for m in ('torch', 'pyarrow', 'tqdm', 'ray', 'server') if m in sys.modules)); "
             "sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", probe, str(ROOT), "--model", MODEL, "--input", str(source),
                           "--output", str(tmp_path / "p.jsonl"), "--no-progress",
                           "--model-repository", str(REPOSITORY)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]"


def test_every_flag_has_help():
    parser = batch_infer.build_parser()
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert flags and all(a.help for a in flags), [a.dest for a in flags if not a.help]


def test_progress_bar_counts_sequences(tmp_path, sample, capsys):
    source = tmp_path / "in.jsonl"
    write_jsonl(source, sample[:10])
    assert batch_infer.main(["--model", MODEL, "--input", str(source), "--output", str(tmp_path / "p.jsonl"),
                             "--progress", "--model-repository", str(REPOSITORY)]) == 0
    err = capsys.readouterr().err
    assert "seq/s" in err and "10" in err


def test_onnxruntime_threads_never_exceed_physical_cores():
    cores = backends.physical_cores()
    assert LocalBackend(REPOSITORY, MODEL, runs=1).model.threads == cores
    assert LocalBackend(REPOSITORY, MODEL, threads=10_000, runs=1).model.threads == cores
    assert LocalBackend(REPOSITORY, MODEL, threads=1).model.threads == 1
    side_by_side = LocalBackend(REPOSITORY, MODEL, threads=10_000, runs=cores)
    assert side_by_side.concurrency == cores and side_by_side.model.threads == 1  # the cores split between runs
    default = LocalBackend(REPOSITORY, MODEL)  # one one-thread run per core
    assert (default.concurrency, default.model.threads) == (cores, 1)
    with pytest.raises(BackendError, match="--runs must be 0"):
        LocalBackend(REPOSITORY, MODEL, runs=-1)


def test_runs_side_by_side_write_the_same_predictions_in_the_same_order(tmp_path, sample):
    source = tmp_path / "in.jsonl"
    write_jsonl(source, sample)
    outputs = {}
    for runs in (1, 3):
        outputs[runs] = tmp_path / f"out-{runs}.jsonl"
        assert batch_infer.main(["--model", MODEL, "--input", str(source), "--output", str(outputs[runs]),
                                 "--batch-size", "4", "--runs", str(runs), "--include", "attention",
                                 "--model-repository", str(REPOSITORY)]) == 0
    one, three = ([json.loads(line) for line in outputs[n].read_text().splitlines()] for n in (1, 3))
    assert [row["id"] for row in one] == [row["id"] for row in three] and len(one) == len(sample)
    for a, b in zip(one, three, strict=True):
        assert a["label"] == b["label"]
        np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=1e-6)
        np.testing.assert_allclose(a["attention"], b["attention"], atol=1e-6)


def test_parquet_resume_needs_the_same_columns(tmp_path, sample):
    source = tmp_path / "in.jsonl"
    write_jsonl(source, sample[:5])
    out = tmp_path / "preds.parquet"
    assert run_cli("--model", MODEL, "--input", source, "--output", out) == 0
    assert run_cli("--model", MODEL, "--input", source, "--output", out, "--resume", "--include", "h_n") == \
        pipeline.EXIT_FATAL
    assert run_cli("--model", MODEL, "--input", source, "--output", out, "--resume") == 0
    assert pq.read_table(out).num_rows == 5


def test_the_shipped_samples_hold_the_same_records_in_every_format():
    """samples/ has the README's inputs in JSON Lines, Parquet and npz: the same 36 sequences, ids and labels."""
    by_format = {}
    for suffix in ("jsonl", "parquet", "npz"):
        records = list(each_record(read_records(ROOT / "samples" / f"japanese_vowels_sample.{suffix}")))
        by_format[suffix] = [(r.id, r.label, r.steps) for r in records]
    jsonl = by_format.pop("jsonl")
    assert len(jsonl) == 36
    for suffix, records in by_format.items():
        assert [(i, label) for i, label, _ in records] == [(i, label) for i, label, _ in jsonl], suffix
        for (_, _, got), (_, _, want) in zip(records, jsonl, strict=True):
            np.testing.assert_array_equal(got, want, err_msg=suffix)
