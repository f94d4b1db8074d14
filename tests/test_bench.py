"""Smoke test of the benchmark suite: `python -m bench --smoke` runs and writes valid results.

Never asserts timings (the CI machine is shared and noisy): only that every named figure is
there with a value, a goal field and a unit, that RESULTS.md and the plots exist, and that the
load generator saw no errors.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = sorted(p.name for p in (ROOT / "model_repository").iterdir() if p.is_dir() and not p.name.endswith("_int8"))
EXPECTED = (
    [f"runtime.{m}" for m in MODELS]
    + [f"efficiency.{c}_h{h}" for c in ("lstm", "gru") for h in (128, 256)]
    + [f"efficiency.{m}" for m in MODELS]
    + [f"int8.{m}.{k}" for m in MODELS for k in ("speedup", "accuracy_drop")]
    + [f"serving.{mode}.c{c}" for mode in ("unary", "stream") for c in (1, 8, 64)]
    + ["serving.per_call_64", "serving.dynamic_batching", "latency.single_client"]
)
WITH_GOAL = (
    [f"runtime.{m}" for m in MODELS]
    + [f"efficiency.{c}_h{h}" for c in ("lstm", "gru") for h in (128, 256)]
    + ["serving.unary.c64", "serving.stream.c64", "serving.per_call_64", "latency.single_client"]
)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out-dir", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_int8_section_measures_with_the_export_code(tmp_path: Path) -> None:
    """Figure 6 quantizes and scores with model/quantize.py, the code behind `export.py --int8`."""
    from bench.common import MODES, test_sequences
    from bench.int8 import measure
    from seqserve.repository import latest_version

    sequences, targets, _ = test_sequences()
    r = measure("jv_lstm_stream", MODES["smoke"], tmp_path / "int8", sequences, targets)
    assert r["int8_ops"]["DynamicQuantizeLSTM"] == 2 and r["recurrent_layers_quantized"]
    assert r["accuracy_drop"] == pytest.approx(r["fp32_accuracy"] - r["int8_accuracy"], abs=1e-12)
    trained = latest_version(ROOT / "model_repository", "jv_lstm_stream").test_accuracy
    assert r["fp32_accuracy"] == pytest.approx(trained, abs=1.5 / len(sequences))  # ORT vs PyTorch argmax
    assert r["speed"]["b64"]["speedup"] > 0


@pytest.mark.slow
def test_results_json_has_every_figure(smoke_run: Path) -> None:
    results = json.loads((smoke_run / "results.json").read_text())
    assert results["mode"] == "smoke"
    assert {"timestamp", "machine", "figures"} <= set(results)
    figures = results["figures"]
    missing = sorted(set(EXPECTED) - set(figures))
    assert not missing, f"figures missing: {missing}"
    for name, fig in figures.items():
        assert {"value", "goal", "met", "unit", "details"} <= set(fig), name
        if name.startswith("batch_script.") and fig["value"] is None:
            continue  # bench/batch_bench.py absent or failed: reported, not measured
        assert isinstance(fig["value"], float) and math.isfinite(fig["value"]), (name, fig["value"])
        if fig["goal"] is None:
            assert fig["met"] is None, name
        else:
            assert isinstance(fig["met"], bool), name
    for name in WITH_GOAL:
        assert figures[name]["goal"], f"{name} has no goal"
    assert any(n.startswith("batch_script.") for n in figures)


@pytest.mark.slow
def test_load_generator_saw_no_errors(smoke_run: Path) -> None:
    results = json.loads((smoke_run / "results.json").read_text())
    for rep in results["raw"]["serving"]["reps"]:
        for scenario in rep["loadgen"]:
            assert scenario["errors"] == 0, (scenario["label"], scenario["first_error"])
            assert scenario["calls"] > 0, scenario["label"]


@pytest.mark.slow
def test_report_and_plots_written(smoke_run: Path) -> None:
    results = json.loads((smoke_run / "results.json").read_text())
    text = (smoke_run / "RESULTS.md").read_text()
    for name in results["figures"]:
        assert f"`{name}`" in text
    assert {"latency_vs_concurrency.png", "throughput_vs_batch.png"} <= set(results["plots"])
    for png in results["plots"]:
        assert (smoke_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_new_results_file_keeps_the_sections_other_bench_commands_wrote(tmp_path: Path) -> None:
    from bench.__main__ import write_results
    from bench.common import write_section

    path = tmp_path / "RESULTS.md"
    path.write_text("# old figures\n")
    write_section(path, "<!-- bench.peers: start -->", "<!-- bench.peers: end -->",
                  "<!-- bench.peers: start -->\npeer table\n<!-- bench.peers: end -->")
    write_results(path, "# new figures\n")
    text = path.read_text()
    assert text.startswith("# new figures") and "old figures" not in text
    assert text.count("peer table") == 1 and text.rstrip().endswith("<!-- bench.peers: end -->")
