"""The client CLI against a real server: list, info, encode a file, stream a sequence, errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from servers import REPOSITORY, ROOT, threaded_server

SAMPLE = ROOT / "samples" / "japanese_vowels_sample.jsonl"


@pytest.fixture(scope="module")
def server():
    with threaded_server(REPOSITORY) as s:
        yield s


def cli(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seqserve.cli", "--server", server.target, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_list_shows_every_model(server):
    out = cli(server, "list")
    assert out.returncode == 0, out.stderr
    for name in ("jv_bilstm_attn", "jv_bigru_attn", "jv_lstm_stream"):
        assert name in out.stdout


def test_info_describes_a_model(server):
    out = cli(server, "info", "jv_bigru_attn")
    assert out.returncode == 0 and 'cell: "gru"' in out.stdout


def test_encode_prints_one_prediction_per_sequence(server):
    out = cli(server, "encode", "jv_bilstm_attn", str(SAMPLE), "--limit", "4", "--outputs", "hidden",
              "--show-tensors")
    assert out.returncode == 0, out.stderr
    predictions = [line for line in out.stdout.splitlines() if "->" in line]
    assert len(predictions) == 4 and all("(true " in line for line in predictions)
    assert "h_n [4, 64]" in out.stdout and "c_n [4, 64]" in out.stdout


def test_stream_prints_a_running_prediction_per_chunk(server):
    out = cli(server, "stream", "jv_lstm_stream", str(SAMPLE), "--index", "2", "--chunk", "3")
    assert out.returncode == 0, out.stderr
    updates = [line for line in out.stdout.splitlines() if "after" in line]
    assert len(updates) >= 3 and updates[-1].endswith("(final)")


def test_errors_exit_non_zero_with_the_status(server):
    out = cli(server, "info", "nope")
    assert out.returncode == 1 and "NOT_FOUND" in out.stderr and "nope" in out.stderr
