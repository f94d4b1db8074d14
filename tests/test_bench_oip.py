"""bench.oip: the v2-vs-v1 figure from paired rounds, its RESULTS.md section, and a quick real run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import write_section
from bench.oip import SECTION_END, SECTION_START, figures_from, same_answer, section

ROOT = Path(__file__).resolve().parent.parent


def result(api: str, concurrency: int, round_: int, seqs_per_s: float) -> dict:
    return {"api": api, "concurrency": concurrency, "round": round_, "seqs_per_s": seqs_per_s, "calls": 100,
            "p50_ms": 1.0, "p99_ms": 2.0, "server_cpu_s": 0.05, "client_cpu_s": 0.02, "errors": 0}


def test_figure_is_the_median_of_paired_ratios():
    rows = [result("v1", c, r, 1000.0) for c in (1, 64) for r in range(3)]
    rows += [result("v2", 1, r, v) for r, v in enumerate((900.0, 1100.0, 950.0))]
    rows += [result("v2", 64, r, v) for r, v in enumerate((800.0, 700.0, 900.0))]
    figures = figures_from(rows)
    assert figures["oip.c1"]["value"] == pytest.approx(0.95) and figures["oip.c1"]["met"]
    assert figures["oip.c64"]["value"] == pytest.approx(0.8) and not figures["oip.c64"]["met"]
    assert figures["oip.c64"]["v1_server_cpu_us_per_seq"] == pytest.approx(500.0)


def test_the_section_is_replaced_between_its_markers(tmp_path: Path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\nother sections\n")
    figures = figures_from([result(api, c, 0, 1000.0) for api in ("v1", "v2") for c in (1, 64)])
    write_section(results, SECTION_START, SECTION_END, section(figures, "jv_bilstm_attn", 1, 1.0, "then"))
    write_section(results, SECTION_START, SECTION_END, section(figures, "jv_bilstm_attn", 1, 1.0, "now"))
    text = results.read_text()
    assert text.startswith("# Benchmark results\n\nother sections\n")
    assert text.count(SECTION_START) == text.count(SECTION_END) == 1 and "now" in text and "then" not in text


def test_v2_asks_for_what_encode_answers_by_default():
    assert same_answer("jv_bilstm_attn") == ["h_n", "c_n", "context", "attention", "logits", "probabilities", "label"]


@pytest.mark.slow
def test_quick_run_against_a_real_server(tmp_path: Path):
    """Both load generators against one server process, 1 and 64 clients (about 15 s)."""
    out, results = tmp_path / "oip.json", tmp_path / "RESULTS.md"
    subprocess.run([sys.executable, "-m", "bench.oip", "--quick", "--json", str(out), "--results", str(results)],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)
    figures = json.loads(out.read_text())["figures"]
    assert set(figures) == {"oip.c1", "oip.c64"}
    assert all(f["errors"] == 0 and f["value"] > 0 for f in figures.values())
    assert SECTION_START in results.read_text()
