"""Figure 5: the batch script (batch_infer's local backend) vs in-process onnxruntime at its best (the
better of one run on every thread and one-thread runs side by side, as the job runs them).

Runs `bench/batch_bench.py` (its own process; it times onnxruntime on the bare session and the
batch job on the same sequences, alternately) and turns its JSON into figures, one per input
format: the job's sequences/s over onnxruntime's, goal >= 0.9 (npz, Parquet) and >= 0.6 (JSON Lines,
whose parsing is text).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.common import ROOT, Mode, at_least, figure

SCRIPT = ROOT / "bench" / "batch_bench.py"
GOAL = 0.9
GOALS = {"jsonl": 0.6}  # by input format, where it differs from GOAL
ARGS = {
    "smoke": ["--sequences", "370", "--repeats", "1", "--formats", "npz", "--streams"],
    "quick": ["--quick", "--formats", "npz", "jsonl", "--streams"],
    "full": [],
}


def run(mode: Mode, work_dir: Path) -> dict[str, dict]:
    if not SCRIPT.is_file():
        return {"batch_script.local": figure(None, f">= {GOAL:g}", None, "local seq/s / onnxruntime seq/s",
                                             missing=f"{SCRIPT.relative_to(ROOT)} does not exist")}
    out = work_dir / "batch_bench.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *ARGS[mode.name]], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        return {"batch_script.local": figure(None, f">= {GOAL:g}", None, "local seq/s / onnxruntime seq/s",
                                             error=done.stderr[-2000:])}
    result = json.loads(out.read_text())
    figures = {}
    common = {"model": result.get("model"), "sequences": result.get("sequences"),
              "batch_size": result.get("batch_size"), "threads": result.get("threads"),
              "repeats": result.get("repeats"),
              "ort_seqs_per_s": result["ort_in_process"]["sequences_per_second"], "remote": result.get("remote", {})}
    for fmt, r in result["local"].items():
        value = r["ratio_to_ort"]
        figures[f"batch_script.local_{fmt}"] = figure(
            value, *at_least(value, GOALS.get(fmt, GOAL)), f"local seq/s ({fmt} in, jsonl out) / onnxruntime seq/s",
            local_seqs_per_s=r["sequences_per_second"], paired_ratio_median=r.get("paired_ratio_median"),
            ratio_to_ort_one_run=r.get("ratio_to_ort_one_run"), **common)
    return figures
