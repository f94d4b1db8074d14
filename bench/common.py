"""What every section shares: thread settings, timing, the data, sessions and the figure record."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqserve.inference import Batch
from seqserve.server.config import physical_cores

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "model_repository"
THREADS = physical_cores()  # what the server gives onnxruntime; every in-process comparison uses it too


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence C++ warnings written straight to file descriptor 2 (the TorchScript exporter's)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@dataclass(frozen=True)
class Mode:
    """How long each measurement runs; `smoke` (CI) < `quick` (< 2 min) < `full`."""

    name: str
    rounds: int  # alternating rounds per paired timing
    min_time: float  # seconds per side per round
    serving_reps: int  # echo/server/ort_best repetitions
    warmup_s: float  # load generator warm-up per scenario
    duration_s: float  # load generator measuring window per scenario
    runtime_batches: tuple[int, ...] = (1, 8, 64)
    runtime_times: tuple[int, ...] = (29, 100, 500)
    efficiency_hidden: tuple[int, ...] = (128, 256)
    efficiency_cells: tuple[str, ...] = ("lstm", "gru")


MODES = {
    "smoke": Mode("smoke", rounds=1, min_time=0.02, serving_reps=1, warmup_s=0.2, duration_s=0.4,
                  runtime_batches=(1,), runtime_times=(29,)),
    "quick": Mode("quick", rounds=3, min_time=0.05, serving_reps=1, warmup_s=0.3, duration_s=1.0,
                  runtime_batches=(1, 8, 64), runtime_times=(29, 100)),
    "full": Mode("full", rounds=7, min_time=0.2, serving_reps=3, warmup_s=1.0, duration_s=4.0),
}


def figure(value: float | None, goal: str | None, met: bool | None, unit: str, **details: Any) -> dict[str, Any]:
    """One named result: `goal` is None for figures reported without a goal."""
    return {"value": None if value is None else float(value), "goal": goal, "met": met, "unit": unit,
            "details": details}


def at_least(value: float, goal: float) -> tuple[str, bool]:
    return f">= {goal:g}", bool(value >= goal)


def at_most(value: float, goal: float) -> tuple[str, bool]:
    return f"<= {goal:g}", bool(value <= goal)


def paired_times(fns: Mapping[str, Callable[[], object]], rounds: int, min_time: float,
                 settle: float = 0.02) -> dict[str, list[float]]:
    """Seconds per call of each function, measured alternately (order flipped every round).

    Each function is warmed up, then called enough times per round to fill `min_time`; a round's
    figure is its median call, so a rare multi-second stall (a thread of an OpenMP team
    descheduled on a busy 2-core machine) does not decide it. Between sides the bench sleeps
    `settle` seconds so the previous side's spinning pool threads park before the next starts.
    Returns, for each function, every round's figure, so ratios can be taken round by round.
    """
    counts = {}
    for name, fn in fns.items():
        fn()
        fn()
        t0 = time.perf_counter()
        fn()
        once = max(time.perf_counter() - t0, 1e-6)
        counts[name] = max(1, min(1000, int(min_time / once)))
    out: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            fn, calls = fns[name], []
            time.sleep(settle)
            for _ in range(counts[name]):
                t0 = time.perf_counter()
                fn()
                calls.append(time.perf_counter() - t0)
            out[name].append(statistics.median(calls))
    return out


def median_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median over rounds of num[i] / den[i] (pairs measured next to each other)."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if len(values) else float("nan")


def test_sequences() -> tuple[list[np.ndarray], np.ndarray, tuple[str, ...]]:
    """JapaneseVowels test split: (sequences (T_i, 12) float32, targets, labels)."""
    from seqserve.model.data import load_split

    data = load_split("test")
    return [np.ascontiguousarray(s, dtype=np.float32) for s in data.sequences], data.targets, data.class_labels


def model_names(repository: Path = REPOSITORY) -> list[str]:
    """The repository's float32 models (each section derives whatever variant it compares from them)."""
    from seqserve.metadata import FP32
    from seqserve.repository import scan_repository

    versions, _ = scan_repository(repository)
    return sorted({v.name for v in versions if v.precision == FP32})


def runtime_for(name: str, repository: Path = REPOSITORY, folder: Path | None = None):
    """The server's own `ModelRuntime` (same session options, THREADS intra-op threads).

    `folder` swaps in another model.onnx with the same contract (e.g. a quantized copy).
    """
    from seqserve.repository import ModelVersion, latest_version
    from seqserve.server.runtime import ModelRuntime

    version = latest_version(repository, name)
    if folder is not None:
        version = ModelVersion(version.name, version.version, Path(folder), version.metadata)
    return ModelRuntime(version, THREADS)


def feeds_for(runtime, x: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
    """Every input of `runtime`'s model for a padded batch, zero states included (the core's feeds)."""
    return runtime.feeds(Batch(x, lengths))


def machine_info() -> dict[str, Any]:
    import grpc
    import onnxruntime as ort

    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)),
        "physical_cores": THREADS,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "grpcio": grpc.__version__,
        "loadavg_start": os.getloadavg(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")
    tmp.replace(path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


SECTION = re.compile(r"<!-- (bench\.[a-z_]+): start -->.*?<!-- \1: end -->", re.S)


def write_section(path: Path, start: str, end: str, text: str) -> None:
    """Replace the section between the markers `start` and `end` in `path` (text includes them), or append it."""
    current = path.read_text() if path.exists() else ""
    if start in current and end in current:
        head, rest = current.split(start, 1)
        current = head + text + rest.split(end, 1)[1]
    else:
        current = current.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(current)


def kept_sections(path: Path) -> str:
    """The sections other bench commands wrote into `path` (bench.oip, bench.peers), to carry over when
    `python -m bench` writes the file anew."""
    if not path.exists():
        return ""
    return "\n\n".join(m.group(0) for m in SECTION.finditer(path.read_text()))
