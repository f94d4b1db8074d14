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


def test_info_describes_a_model_in_readable_lines(server):
    out = cli(server, "info", "jv_bigru_attn")
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(None, 1) for line in out.stdout.splitlines() if line[:1].strip())
    assert lines["model"] == "jv_bigru_attn version 1 (served: 1)"
    assert lines["architecture"] == "2-layer bidirectional GRU, hidden 64, additive attention"
    assert lines["classes"] == "1 2 3 4 5 6 7 8 9"
    assert lines["parity"].startswith("passed: max abs error ")
    assert "x float32 [batch, time, 12]" in lines["inputs"]
    assert 'cell: "gru"' not in out.stdout and "{" not in out.stdout  # not protobuf's text format


@pytest.mark.parametrize("suffix", ["jsonl", "npz", "parquet"])
def test_encode_prints_one_prediction_per_sequence(server, suffix):
    sample = SAMPLE.with_suffix(f".{suffix}")  # npz and Parquet are read in blocks, JSON Lines a line at a time
    out = cli(server, "encode", "jv_bilstm_attn", str(sample), "--limit", "4", "--outputs", "hidden",
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


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("command", [
    ["encode", "jv_bilstm_attn", str(SAMPLE), "--limit", "1"],
    ["stream", "jv_lstm_stream", str(SAMPLE), "--index", "9", "--chunk", "5"],
])
def test_plot_draws_a_png_and_says_where(server, tmp_path, command):
    picture = tmp_path / "plots" / "prediction.png"  # its folder does not exist yet
    out = cli(server, *command, "--plot", str(picture))
    assert out.returncode == 0, out.stderr
    assert picture.read_bytes()[:8] == PNG_SIGNATURE and picture.stat().st_size > 10_000
    assert f"plot written to {picture}" in out.stderr


def test_an_unreachable_server_prints_only_the_error():
    out = subprocess.run([sys.executable, "-m", "seqserve.cli", "--server", "127.0.0.1:1", "--timeout", "2", "list"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stdout == ""
    assert "UNAVAILABLE" in out.stderr and "--server" in out.stderr and "Traceback" not in out.stderr


def test_a_closed_pipe_ends_the_cli_quietly(server):
    """`seqserve.cli list | head -1`: the reader goes away first; no BrokenPipeError traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "seqserve.cli", "--server", server.target, "list"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the CLI has written anything
    stderr = proc.stderr.read()
    assert proc.wait(60) == 1
    assert stderr == ""


BLOCK_SERVER_PACKAGES = """
import importlib.abc, runpy, sys
SERVER_ONLY = ("onnxruntime", "prometheus_client", "grpc_health", "grpc_reflection", "torch", "pyarrow", "server")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in SERVER_ONLY:
            raise ImportError(f"{name} is not part of the client install")
sys.meta_path.insert(0, Block())
sys.argv = ["seqserve.cli", *sys.argv[1:]]
runpy.run_module("seqserve.cli", run_name="__main__")
"""


def test_the_cli_needs_only_the_client_install(server):
    """The base install (grpcio, protobuf, numpy) is enough to call a server: nothing server-side is imported."""
    for command in (["list"], ["encode", "jv_bilstm_attn", str(SAMPLE), "--limit", "2"]):
        out = subprocess.run([sys.executable, "-c", BLOCK_SERVER_PACKAGES, "--server", server.target, *command],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "jv_bilstm_attn" in out.stdout or "->" in out.stdout
