"""bench.peers without the peers: figures from paired rounds, the section, the probe's requests and the
probe itself against a real seqserve (the peers' venvs are never installed by CI)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bench.common import REPOSITORY, write_section
from bench.loadgen import build_requests
from bench.peers import (
    ANSWER,
    BIG_CALL,
    BIG_CLIENTS,
    CONCURRENCY,
    OTHERS_MAX,
    PROBE_TRAFFIC,
    SECTION_END,
    SECTION_START,
    clean_rounds,
    figures_from,
    probe_requests,
    probe_server,
    reference_logits,
    scenarios,
    section,
    table_rows,
)
from bench.procs import real_server
from seqserve.v1 import seqserve_pb2 as pb

MODEL = "jv_bilstm_attn"


def result(server: str, api: str, concurrency: int, per_call: int, round_: int, seqs_per_s: float,
           p50_ms: float = 1.0) -> dict:
    return {"server": server, "api": api, "concurrency": concurrency, "per_call": per_call, "round": round_,
            "seqs_per_s": seqs_per_s, "p50_ms": p50_ms, "p99_ms": 2 * p50_ms, "errors": 0, "first_error": ""}


def run_of(seqserve: float, kserve: float, mlserver: float, rounds: int = 2) -> list[dict]:
    loads = [(c, 1) for c in CONCURRENCY] + [(BIG_CLIENTS, BIG_CALL)]
    rows = []
    for r in range(rounds):
        for c, k in loads:
            rows += [result("seqserve", "v2", c, k, r, seqserve), result("kserve", "v2", c, k, r, kserve),
                     result("mlserver", "v2", c, k, r, mlserver)]
            if k == 1:
                rows += [result("seqserve", "v1-stream", c, k, r, 4 * kserve)]
    return rows


def test_figures_are_ratios_over_kserve_with_goals_and_over_mlserver_without():
    figures = figures_from(run_of(seqserve=2000.0, kserve=1000.0, mlserver=500.0))
    assert figures["peers.c64.unary.kserve"]["value"] == pytest.approx(2.0) and figures["peers.c64.unary.kserve"]["met"]
    assert figures["peers.c64.stream.kserve"]["value"] == pytest.approx(4.0)
    assert figures["peers.b64.kserve"]["met"] and figures["peers.c1.p50.kserve"]["value"] == pytest.approx(1.0)
    assert figures["peers.c1.p50.kserve"]["met"]  # <= 1: equal latency meets it
    assert figures["peers.c64.unary.mlserver"]["value"] == pytest.approx(4.0)
    assert figures["peers.c64.unary.mlserver"]["goal"] is None and figures["peers.c64.unary.mlserver"]["met"] is None


def test_a_missed_goal_is_marked():
    figures = figures_from(run_of(seqserve=1100.0, kserve=1000.0, mlserver=500.0))
    assert not figures["peers.c64.unary.kserve"]["met"] and not figures["peers.b64.kserve"]["met"]


def test_rounds_where_other_processes_took_cpu_are_left_out_while_two_stay():
    rows = [r | {"others_cores": 2 * OTHERS_MAX if r["round"] == 1 else 0.0}
            for r in run_of(seqserve=2000.0, kserve=1000.0, mlserver=500.0, rounds=3)]
    assert clean_rounds(rows) == [0, 2]
    assert clean_rounds([r for r in rows if r["round"] < 2]) == [0, 1]  # one clean round: keep them all


def test_the_section_is_replaced_between_its_markers(tmp_path: Path):
    results = run_of(seqserve=2000.0, kserve=1000.0, mlserver=500.0)
    counts = {"rounds": 20, "requests": 160, "wrong": 0, "failed": 0, "rounds_with_wrong": 0,
              "rounds_with_failed": 0, "max_abs_diff": 1e-7, "first_failure": ""}
    probes = {"seqserve": {t: counts for t in PROBE_TRAFFIC},
              "mlserver": {t: counts | {"failed": 140, "first_failure": "a | b"} for t in PROBE_TRAFFIC}}
    meta = {"when": "then", "wall_s": 1.0, "model": MODEL, "rounds": 2, "warmup_s": 1, "duration_s": 3,
            "pad_to": 29, "onnxruntime": "1.32.0", "versions": {"kserve": "0.21.0", "mlserver": "1.7.1"}}
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\nother sections\n")
    write_section(path, SECTION_START, SECTION_END, section(figures_from(results), table_rows(results), probes, meta))
    write_section(path, SECTION_START, SECTION_END,
                  section(figures_from(results), table_rows(results), probes, meta | {"when": "now"}))
    text = path.read_text()
    assert text.startswith("# Benchmark results\n\nother sections\n")
    assert text.count(SECTION_START) == text.count(SECTION_END) == 1 and "now" in text and "then" not in text
    assert "| mlserver | mixed | 160 | 0 | 140 |" in text and "a / b" in text  # a `|` would break the table


def test_mixed_probe_traffic_pads_half_the_requests_and_padded_all():
    sequences = [np.ones((t, 12), np.float32) for t in range(7, 30)]
    mixed = probe_requests(sequences, 0, 29)
    assert [padded for _, _, padded in mixed] == [True, False] * 4
    assert all(x.shape == ((1, 29, 12) if padded else (1, len(sequences[i]), 12)) for i, x, padded in mixed)
    assert all(padded for _, _, padded in probe_requests(sequences, 0, 29, "padded"))


def test_mlserver_requests_have_one_shape_and_seqserve_also_runs_its_own_api():
    served = SimpleNamespace(target="127.0.0.1:1", pid=1)
    mlserver = scenarios("mlserver", served, MODEL, 29, 0.1, 0.1)
    assert list(mlserver) == ["bench.oip_loadgen"]
    assert all(s["pad_to"] == 29 and s["lengths"] for s in mlserver["bench.oip_loadgen"])
    seqserve = scenarios("seqserve", served, MODEL, 29, 0.1, 0.1)
    assert {s["api"] for s in seqserve["bench.loadgen"]} == {"v1-unary", "v1-stream"}
    assert not any("pad_to" in s for s in seqserve["bench.oip_loadgen"])


def test_every_api_asks_for_the_same_answer():
    """Logits and probabilities over v2; OUTPUT_LOGITS (label, probabilities, logits) over seqserve.v1, not
    its default, which adds the final states and the attention."""
    served = SimpleNamespace(target="127.0.0.1:1", pid=1)
    plans = [scenarios(name, served, MODEL, 29, 0.1, 0.1) for name in ("seqserve", "kserve", "mlserver")]
    assert all(s["outputs"] == ANSWER for plan in plans for s in plan["bench.oip_loadgen"])
    sequences = [np.zeros((3, 12), np.float32), np.ones((5, 12), np.float32)]
    for s in plans[0]["bench.loadgen"]:
        for request in build_requests(MODEL, sequences, s["per_call"], s["packed"], s["outputs"]):
            assert list(request.outputs) == [pb.OUTPUT_LOGITS]
    assert all(not r.outputs for r in build_requests(MODEL, sequences, 1))  # no outputs: the server's default


@pytest.mark.slow
def test_probe_finds_seqserve_exact_on_mixed_traffic(tmp_path: Path):
    """A real seqserve on 127.0.0.1: every answer within the probe's tolerance, no call failed (about 5 s)."""
    rng = np.random.default_rng(0)
    sequences = [rng.standard_normal((t, 12)).astype(np.float32) for t in rng.integers(5, 30, size=40)]
    reference = reference_logits(MODEL, sequences)
    server = real_server(REPOSITORY, tmp_path, "server").wait_ready()
    try:
        for traffic in PROBE_TRAFFIC:
            counts = asyncio.run(probe_server(server.target, MODEL, sequences, reference, 29, traffic, rounds=4))
            assert (counts["requests"], counts["wrong"], counts["failed"]) == (32, 0, 0), counts
    finally:
        server.stop()
