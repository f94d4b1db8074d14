"""ONNX export: graph structure, parity with PyTorch, streaming through onnxruntime, the publish gate, the CLI,
the int8 variant."""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import io
import itertools
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import (
    CELLS,
    LABELS,
    ROOT,
    H,
    ort_run,
    random_batch,
    random_state,
    run_cli,
    staging_leftovers,
    torch_outputs,
    write_checkpoint,
)
from servers import REPOSITORY, threaded_server

import seqserve.cli
import seqserve.model.onnx_export as onnx_export
import seqserve.model.parity as parity
from seqserve.client import SeqserveClient
from seqserve.contract import BATCH, TIME, input_names, input_specs, output_names, output_specs
from seqserve.model import export
from seqserve.model.checkpoint import load_checkpoint
from seqserve.model.data import load_split, pad_batch
from seqserve.model.errors import AccuracyDropError, CheckpointError, ParityError, SeqserveModelError
from seqserve.model.evaluate import ACCURACY_BATCH
from seqserve.model.onnx_export import export_onnx, graph_problems
from seqserve.model.parity import (
    ATOL,
    CONDITIONING_SLACK,
    ROUNDING_ALLOWANCE_CAP,
    OutputError,
    ParityReport,
    Witnesses,
    check_parity,
    make_session,
)
from seqserve.repository import read_version, sha256_of
from seqserve.server.runtime import ModelRuntime

LONG = 200  # longest sequence of the parity grid here (the CLI default is 500)
EXACT_AGREEMENT = 1e-12  # max |numpy reference - float64 PyTorch|: two float64 runs of the same equations

# (cell, layers, bidirectional): bidirectional models pool with attention, unidirectional ones stream
# with step logits, like the presets.
GRID = list(itertools.product(CELLS, (1, 2), (False, True)))


def grid_id(g) -> str:
    cell, layers, bi = g
    return f"{cell}-L{layers}-{'bi' if bi else 'uni'}"


def grid_config(cell, layers, bi) -> dict:
    if bi:
        return dict(cell=cell, layers=layers, bidirectional=True, attention="additive")
    return dict(cell=cell, layers=layers, bidirectional=False, attention="none", step_logits=True)


@pytest.fixture(params=GRID, ids=grid_id)
def exp(request, exported):
    return exported(**grid_config(*request.param))


def _ancestors(graph: onnx.GraphProto, value: str) -> set[str]:
    """Every value the given value is computed from (walking node inputs back)."""
    producer = {out: node for node in graph.node for out in node.output}
    seen, todo = set(), [value]
    while todo:
        v = todo.pop()
        if v in seen:
            continue
        seen.add(v)
        if v in producer:
            todo.extend(i for i in producer[v].input if i)
    return seen


# ---------------------------------------------------------------- 5. graph and parity


def test_graph_problems_is_empty(exp):
    assert graph_problems(exp.path, exp.model) == []


def test_graph_structure(exp):
    """The graph checks, done independently of graph_problems."""
    cfg = exp.model.config
    onnx.checker.check_model(str(exp.path))
    graph = onnx.load(str(exp.path)).graph
    ops = Counter(n.op_type for n in graph.node)
    assert ops["Loop"] == 0 and ops["Scan"] == 0
    rnn_nodes = [n for n in graph.node if n.op_type in ("RNN", "LSTM", "GRU")]
    assert [n.op_type for n in rnn_nodes] == [cfg.cell.upper()] * cfg.num_layers
    graph_inputs = {i.name for i in graph.input}
    for node in rnn_nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["hidden_size"] == H
        direction = attrs.get("direction", b"forward")
        assert direction == (b"bidirectional" if cfg.bidirectional else b"forward")
        # sequence_lens (input 4) is wired, and computed from the `lengths` graph input
        assert len(node.input) > 4 and node.input[4], f"{node.name}: no sequence_lens"
        assert "lengths" in _ancestors(graph, node.input[4]) & graph_inputs
        if node.op_type == "GRU":
            assert attrs.get("linear_before_reset") == 1
        if cfg.streaming:  # initial_h comes from the h0 input
            assert "h0" in _ancestors(graph, node.input[5])
            if node.op_type == "LSTM":
                assert "c0" in _ancestors(graph, node.input[6])


def test_graph_dims_are_symbolic(exp):
    """Every batch/time dim of every graph input/output is a dim_param; the rest fixed dim_values."""
    arch = exp.model.config.architecture
    graph = onnx.load(str(exp.path)).graph
    assert [i.name for i in graph.input] == input_names(arch)
    assert [o.name for o in graph.output] == output_names(arch)
    declared = {v.name: v for v in list(graph.input) + list(graph.output)}
    dtypes = {"float32": onnx.TensorProto.FLOAT, "int64": onnx.TensorProto.INT64}
    for spec in input_specs(arch) + output_specs(arch):
        ttype = declared[spec.name].type.tensor_type
        assert ttype.elem_type == dtypes[spec.dtype], spec.name
        dims = list(ttype.shape.dim)
        assert len(dims) == len(spec.shape), spec.name
        for dim, want in zip(dims, spec.shape, strict=True):
            if want in (BATCH, TIME):
                assert dim.WhichOneof("value") == "dim_param", f"{spec.name}: {want} is fixed to {dim.dim_value}"
                assert dim.dim_param == want
            else:
                assert dim.WhichOneof("value") == "dim_value" and dim.dim_value == want, spec.name


def test_graph_independent_of_example_length(exp, tmp_path, monkeypatch):
    """Exporting from a longer, wider example gives the same ops: the recurrence was not unrolled over T."""
    monkeypatch.setattr(
        onnx_export, "example_inputs", functools.partial(onnx_export.example_inputs, batch=3, time=13)
    )
    other = tmp_path / "other.onnx"
    export_onnx(exp.model, other)
    a, b = onnx.load(str(exp.path)).graph, onnx.load(str(other)).graph
    assert Counter(n.op_type for n in a.node) == Counter(n.op_type for n in b.node)
    assert graph_problems(other, exp.model) == []


def test_parity_passes(exp):
    report = check_parity(exp.model, exp.path, long_length=LONG)
    assert report.passed, report.summary()
    assert report.max_abs_error < 1e-5 and report.worst("max_abs_vs_torch32") < 1e-5
    assert 0.0 < report.worst("max_abs_vs_reference") < 1e-5
    assert report.worst("reference_vs_torch64") < EXACT_AGREEMENT
    assert all(0.0 < e.input_rounding_effect < 1e-5 for e in report.outputs.values())
    assert set(report.outputs) == set(output_names(exp.model.config.architecture))
    assert f"b1_len{LONG}" in report.cases and "b8_unsorted" in report.cases
    if exp.model.config.streaming:
        assert "b3_empty_row" in report.cases


def _update(ort_out, torch32, torch64, reference=None, rounded=None, batch_axis=0) -> OutputError:
    """One OutputError folded over one case; the reference defaults to torch64, the draws to [torch64]."""
    error = OutputError()
    reference = torch64 if reference is None else reference
    error.update(np.asarray(ort_out, dtype=np.float32),
                 Witnesses(torch32, torch64, reference, [torch64] if rounded is None else rounded, batch_axis))
    return error


@pytest.mark.parametrize("off_from", ["torch32", "torch64", "reference"])
def test_parity_rule_needs_every_witness(off_from):
    """An element within tolerance of two witnesses but not the third fails."""
    exact = np.array([0.0, 1.0, -100.0])
    off = exact + np.array([0.0, 0.0, 1e-5 + 1e-4 * 100.0 + 1e-4])  # just past atol + rtol·|ref| on the last
    refs = {"torch32": exact, "torch64": exact, "reference": exact, off_from: off}
    error = _update(exact, refs["torch32"], refs["torch64"], refs["reference"], rounded=[exact])
    assert error.failures == 1 and error.max_tolerance_used > 1.0
    within = _update(exact, exact, exact + 1e-5, exact + 1e-5, rounded=[exact + 1e-5])
    assert within.failures == 0 and within.max_abs == pytest.approx(1e-5)
    assert within.max_abs_vs_reference == pytest.approx(1e-5) and within.reference_vs_torch64 == 0.0
    assert within.max_tolerance_used == pytest.approx(1e-5 / (1e-5 + 1e-4 * 1e-5), rel=1e-3)  # at the 0 element


@pytest.mark.parametrize("rounding_effect, passes", [(1e-6, False), (1e-5, True)])
def test_parity_allows_a_few_times_the_models_own_sensitivity_to_rounding(rounding_effect, passes):
    """On a row where one float32 rounding of x moves the exact answer by r, errors up to 10 r pass."""
    exact = np.array([[0.0, 0.5]])  # one row
    ort_out = exact + 5e-5  # 5x over ATOL on the 0 element
    error = _update(ort_out, exact, exact, rounded=[exact, exact + np.array([[rounding_effect, 0.0]])])  # larger draw
    assert (error.failures == 0) is passes
    assert error.input_rounding_effect == pytest.approx(rounding_effect)


# b4_long_mixed: a 500-step row beside 3-, 250- and 1-step rows
LONG_MIXED = (500, 3, 250, 1)


@pytest.mark.parametrize("batch_axis", [0, 1], ids=["outputs (B, T, H)", "h_n (L*D, B, H)"])
def test_parity_rounding_allowance_is_per_sequence(batch_axis):
    """The long row's conditioning no longer widens the short rows' tolerance (it used to: one allowance per
    case and output, the whole tensor's largest effect, applied to every element)."""
    rng = np.random.default_rng(0)
    shape = (len(LONG_MIXED), 8, 3) if batch_axis == 0 else (2, len(LONG_MIXED), 3)
    exact = 0.1 * np.tanh(rng.standard_normal(shape))  # small: the plain tolerance is about ATOL
    rounded = exact.copy()
    np.moveaxis(rounded, batch_axis, 0)[0] += 1e-5  # one rounding of x moves the 500-step row by 1e-5 ...
    np.moveaxis(rounded, batch_axis, 0)[1:] += 1e-8  # ... and the short rows by 1e-8
    injected = 5e-5
    whole_tensor_allowance = CONDITIONING_SLACK * np.abs(rounded - exact).max()  # the old rule's, for every element
    assert ATOL + 1e-4 * np.abs(exact).max() < injected < whole_tensor_allowance  # the old rule let it through
    for victim, fails in ((0, False), (1, True), (2, True), (3, True)):
        ort_out = exact.copy()
        np.moveaxis(ort_out, batch_axis, 0)[victim].flat[0] += injected
        error = _update(ort_out, exact, exact, rounded=[rounded], batch_axis=batch_axis)
        assert (error.failures == 1) is fails, f"error on row {victim} ({LONG_MIXED[victim]} steps)"
        assert error.input_rounding_effect == pytest.approx(1e-5)


def test_parity_rounding_allowance_is_capped():
    """However ill-conditioned a row, the allowance stops at ROUNDING_ALLOWANCE_CAP."""
    exact = np.zeros((2, 4))
    rounded = exact + np.array([[1.0], [0.0]])  # row 0 so ill-conditioned that 10 r would excuse anything
    within, beyond = 0.9 * ROUNDING_ALLOWANCE_CAP, 1.1 * ROUNDING_ALLOWANCE_CAP
    assert _update(exact + np.array([[within], [0.0]]), exact, exact, rounded=[rounded]).failures == 0
    error = _update(exact + np.array([[beyond], [0.0]]), exact, exact, rounded=[rounded])
    assert error.failures == 4 and error.max_tolerance_used == pytest.approx(1.1, rel=1e-4)


@pytest.mark.parametrize("victim, passes", [(3, False), (0, True)], ids=["1-step row", "500-step row"])
def test_parity_refuses_an_error_on_a_short_row_beside_a_long_one(monkeypatch, victim, passes):
    """The committed bi-GRU, whose 500-step row of b4_long_mixed moves 9.7e-6 under one rounding of x (an
    allowance of 9.7e-5 under the old whole-tensor rule): onnxruntime's `outputs` moved by 5e-5 on one row."""
    folder = REPOSITORY / "jv_bigru_attn" / "1"
    model, _ = load_checkpoint(folder / "checkpoint.pt")
    real_session = make_session(folder / "model.onnx")

    class Injecting:
        def run(self, names, feeds):
            results = real_session.run(names, feeds)
            if tuple(feeds["lengths"]) == LONG_MIXED:
                results[names.index("outputs")][victim, 0, 0] += 5e-5
            return results

    monkeypatch.setattr(parity, "make_session", lambda path: Injecting())
    report = check_parity(model, folder / "model.onnx")
    assert report.passed is passes, report.summary()
    assert report.outputs["outputs"].failures == (0 if passes else 1)
    assert all(e.failures == 0 for name, e in report.outputs.items() if name != "outputs")


def test_parity_of_attention_without_query(exported):
    exp = exported(cell="lstm", layers=2, bidirectional=True, attention="additive", attention_query=False)
    assert graph_problems(exp.path, exp.model) == []
    report = check_parity(exp.model, exp.path, long_length=LONG)
    assert report.passed, report.summary()


def test_ort_runs_longer_and_wider_than_any_example(exp):
    """T = 300 and batch 32 (export example was T = 5, B = 2), mixed unsorted lengths incl. 1 and T."""
    rng = np.random.default_rng(0)
    lengths = [300, 1] + rng.integers(1, 301, size=30).tolist()
    model = exp.model
    x, lengths_t = random_batch(model, lengths, time=300, seed=21)
    args = [x, lengths_t]
    if model.config.streaming:
        h0, c0 = random_state(model, 32, seed=5)
        args += [h0, c0]
    ort_out = ort_run(exp.session, model, *[None if a is None else a.numpy() for a in args])
    ref = torch_outputs(model, *args)
    assert set(ort_out) == set(ref)
    for name, value in ort_out.items():
        assert value.shape == ref[name].shape, name
        assert np.isfinite(value).all(), name
        np.testing.assert_allclose(value, ref[name], atol=1e-5, rtol=1e-4, err_msg=name)
    assert ort_out["outputs"].shape == (32, 300, model.config.num_directions * H)
    pad = np.arange(300)[None, :] >= np.array(lengths)[:, None]
    assert not ort_out["outputs"][pad].any()
    if "attention" in ort_out:
        assert not ort_out["attention"][pad].any()
        np.testing.assert_allclose(ort_out["attention"].sum(-1), 1.0, atol=1e-6)


# ---------------------------------------------------------------- 4. streaming through onnxruntime

CHUNKS = (7, 1, 13)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_ort_streaming_chunks_equal_full_run(exported, cell, layers):
    exp = exported(**grid_config(cell, layers, False))
    model, session = exp.model, exp.session
    B, T = 3, sum(CHUNKS)
    x, lengths = random_batch(model, [T] * B, seed=17)
    h0, c0 = random_state(model, B, seed=8)
    x, lengths = x.numpy(), lengths.numpy()
    h0_np, c0_np = h0.numpy(), None if c0 is None else c0.numpy()

    full = ort_run(session, model, x, lengths, h0_np, c0_np)
    h, c, outs, steps, start = h0_np, c0_np, [], [], 0
    for size in CHUNKS:
        out = ort_run(session, model, x[:, start : start + size], np.full(B, size), h, c)
        outs.append(out["outputs"])
        steps.append(out["step_logits"])
        h, c = out["h_n"], out.get("c_n")
        start += size
    chunked = {"outputs": np.concatenate(outs, 1), "step_logits": np.concatenate(steps, 1), "h_n": h}
    if cell == "lstm":
        chunked["c_n"] = c
    ref = torch_outputs(model, torch.from_numpy(x), torch.from_numpy(lengths), h0, c0)
    for name, value in chunked.items():
        np.testing.assert_array_equal(value, full[name], err_msg=f"{name}: chunked vs full ORT")
        np.testing.assert_allclose(value, ref[name], atol=1e-5, rtol=1e-4, err_msg=f"{name}: ORT vs torch")


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_ort_streaming_row_with_no_steps_keeps_its_state(exported, cell, layers):
    exp = exported(**grid_config(cell, layers, False))
    model = exp.model
    x, lengths = random_batch(model, [4, 0, 6], time=6, seed=2)
    h0, c0 = random_state(model, 3, seed=6)
    out = ort_run(exp.session, model, x.numpy(), lengths.numpy(), h0.numpy(), None if c0 is None else c0.numpy())
    np.testing.assert_array_equal(out["h_n"][:, 1], h0[:, 1].numpy())
    if cell == "lstm":
        np.testing.assert_array_equal(out["c_n"][:, 1], c0[:, 1].numpy())
    assert not out["outputs"][1].any()
    assert not out["step_logits"][1].any()
    ref = torch_outputs(model, x, lengths, h0, c0)
    for name, value in out.items():
        np.testing.assert_allclose(value, ref[name], atol=1e-5, rtol=1e-4, err_msg=name)


# ---------------------------------------------------------------- 6. the parity gate refuses to publish


def _assert_nothing_published(repository: Path, name: str) -> None:
    assert not (repository / name).exists()
    assert staging_leftovers(repository) == []
    if repository.exists():
        assert [p.name for p in repository.iterdir()] == []


def test_publish_refuses_a_failing_parity_report(tiny_checkpoint, tmp_path, monkeypatch):
    failing = ParityReport(outputs={"logits": OutputError(max_abs=0.5, failures=3)})
    monkeypatch.setattr(export, "check_parity", lambda *a, **k: failing)
    repository = tmp_path / "repo"
    with pytest.raises(ParityError, match="tiny"):
        export.publish(tiny_checkpoint, repository, "tiny", 1, long_length=LONG)
    _assert_nothing_published(repository, "tiny")


def test_publish_refuses_an_onnx_model_that_drifted(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """A model.onnx exported from slightly different weights: the real parity check fails, the CLI exits 1."""
    real_export = export.export_onnx

    def export_perturbed(model, path):
        drifted = copy.deepcopy(model)
        with torch.no_grad():
            drifted.head.bias.add_(1e-3)
        real_export(drifted, path)

    monkeypatch.setattr(export, "export_onnx", export_perturbed)
    repository = tmp_path / "repo"
    argv = [str(tiny_checkpoint), "--name", "tiny", "--repository", str(repository), "--long-length", str(LONG)]
    assert export.main(argv) == 1
    err = capsys.readouterr().err
    assert "parity check failed" in err and "logits" in err
    _assert_nothing_published(repository, "tiny")


def test_publish_refuses_a_broken_graph(tiny_checkpoint, tmp_path, monkeypatch):
    """A graph whose batch/time dims are fixed fails check_graph before any parity run."""
    real_export = export.export_onnx

    def export_static(model, path):
        real_export(model, path)
        m = onnx.load(str(path))
        for dim in m.graph.input[0].type.tensor_type.shape.dim[:2]:
            dim.dim_value = 2
        onnx.save(m, str(path))

    monkeypatch.setattr(export, "export_onnx", export_static)
    repository = tmp_path / "repo"
    with pytest.raises(ParityError, match="x: declared shape"):
        export.publish(tiny_checkpoint, repository, "tiny", 1, long_length=LONG)
    _assert_nothing_published(repository, "tiny")


def test_publish_keeps_an_existing_version_when_parity_fails(tiny_checkpoint, tmp_path, monkeypatch):
    repository = tmp_path / "repo"
    export.publish(tiny_checkpoint, repository, "tiny", 1, long_length=LONG)
    before = sha256_of(repository / "tiny" / "1" / "model.onnx")
    failing = ParityReport(outputs={"logits": OutputError(max_abs=0.5, failures=3)})
    monkeypatch.setattr(export, "check_parity", lambda *a, **k: failing)
    with pytest.raises(ParityError):
        export.publish(tiny_checkpoint, repository, "tiny", 1, overwrite=True, long_length=LONG)
    assert sha256_of(repository / "tiny" / "1" / "model.onnx") == before
    assert read_version(repository / "tiny" / "1").metadata["parity"]["passed"] is True
    assert staging_leftovers(repository) == []


# ---------------------------------------------------------------- 7. export.py end to end


@pytest.fixture(scope="module")
def published(tiny_stream_checkpoint, tmp_path_factory):
    """`python export.py` run once on a tiny streaming checkpoint; (process, repository, checkpoint)."""
    repository = tmp_path_factory.mktemp("cli") / "repo"
    proc = run_cli(
        "export.py", str(tiny_stream_checkpoint), "--name", "tiny_stream", "--version", "3",
        "--repository", str(repository), "--description", "a tiny test model", "--long-length", str(LONG),
    )
    return proc, repository, tiny_stream_checkpoint


def test_cli_publishes(published):
    proc, repository, checkpoint = published
    assert proc.returncode == 0, proc.stderr
    assert "published" in proc.stdout
    folder = repository / "tiny_stream" / "3"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "metadata.json", "model.onnx", "parity.json"]
    assert staging_leftovers(repository) == []
    assert (folder / "checkpoint.pt").read_bytes() == checkpoint.read_bytes()


def test_cli_metadata(published):
    proc, repository, checkpoint = published
    assert proc.returncode == 0, proc.stderr
    folder = repository / "tiny_stream" / "3"
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["onnx_sha256"] == hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
    assert meta["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    model, _ = load_checkpoint(checkpoint)
    arch = model.config.architecture
    assert meta["inputs"] == [s.to_dict() for s in input_specs(arch)]
    assert meta["outputs"] == [s.to_dict() for s in output_specs(arch)]
    assert [i["name"] for i in meta["inputs"]] == ["x", "lengths", "h0"]  # GRU: no c0
    assert meta["name"] == "tiny_stream" and meta["version"] == 3
    assert meta["description"] == "a tiny test model"
    assert meta["streaming"] is True
    assert meta["precision"] == "fp32"
    assert meta["class_labels"] == list(LABELS)
    assert meta["architecture"]["cell"] == "gru" and meta["architecture"]["num_layers"] == 2
    assert meta["parity"]["passed"] is True and meta["parity"]["max_abs_error"] < 1e-5
    assert 0.0 < meta["parity"]["max_abs_vs_reference"] < 1e-5
    assert meta["training"]["test_accuracy"] == 0.25
    parity_json = json.loads((folder / "parity.json").read_text())
    assert parity_json["passed"] is True and f"b1_len{LONG}" in parity_json["cases"]
    assert parity_json["rounding_allowance_cap"] == ROUNDING_ALLOWANCE_CAP
    for name, figures in parity_json["outputs"].items():
        assert figures["max_abs_vs_reference"] < 1e-5, name
        assert figures["reference_vs_torch64"] < EXACT_AGREEMENT, name
    # the published model is the checkpoint's model
    assert graph_problems(folder / "model.onnx", model) == []


def test_cli_output_reads_back(published):
    proc, repository, _ = published
    assert proc.returncode == 0, proc.stderr
    version = read_version(repository / "tiny_stream" / "3")
    assert (version.name, version.version) == ("tiny_stream", 3)
    assert version.class_labels == list(LABELS)
    assert [s.name for s in version.inputs] == ["x", "lengths", "h0"]
    assert version.architecture.streaming


def test_cli_refuses_to_overwrite_without_flag(published):
    proc, repository, checkpoint = published
    assert proc.returncode == 0, proc.stderr
    model_file = repository / "tiny_stream" / "3" / "model.onnx"
    before = sha256_of(model_file)
    again = run_cli("export.py", str(checkpoint), "--name", "tiny_stream", "--version", "3",
                    "--repository", str(repository), "--long-length", str(LONG))
    assert again.returncode == 1
    assert "exists" in again.stderr and "--overwrite" in again.stderr
    assert str(repository / "tiny_stream" / "3") in again.stderr
    assert sha256_of(model_file) == before
    assert staging_leftovers(repository) == []


def test_publish_overwrite_replaces_the_version(tiny_checkpoint, tiny_stream_checkpoint, tmp_path):
    repository = tmp_path / "repo"
    export.publish(tiny_stream_checkpoint, repository, "m", 1, long_length=LONG)
    with pytest.raises(SeqserveModelError, match="--overwrite"):
        export.publish(tiny_checkpoint, repository, "m", 1, long_length=LONG)
    export.publish(tiny_checkpoint, repository, "m", 1, overwrite=True, long_length=LONG)
    version = read_version(repository / "m" / "1")
    assert version.architecture.bidirectional and version.architecture.cell == "lstm"
    assert staging_leftovers(repository) == []


# ---------------------------------------------------------------- 8. bad input, clear errors


def test_cli_missing_checkpoint(tmp_path):
    missing = tmp_path / "nowhere" / "checkpoint.pt"
    proc = run_cli("export.py", str(missing), "--name", "x", "--repository", str(tmp_path / "repo"))
    assert proc.returncode == 1
    assert str(missing) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "repo").exists()


# Run export.py as a script with the train extra's modules made unimportable, as on `pip install seqserve`.
WITHOUT_MODULES = """
import runpy, sys
MISSING = sys.argv[1].split(",")
class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in MISSING:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Missing())
sys.argv = ["export.py", *sys.argv[2:]]
runpy.run_path("export.py", run_name="__main__")
"""


@pytest.mark.parametrize("missing", ["torch", "onnx", "torch,onnx,aeon"])
@pytest.mark.parametrize("argv", [["--help"], ["runs/x/checkpoint.pt", "--name", "x"]], ids=["help", "export"])
def test_cli_on_a_serving_only_install(missing, argv):
    """No torch/onnx: one line naming the train extra, exit status 2, no traceback."""
    proc = subprocess.run([sys.executable, "-c", WITHOUT_MODULES, missing, *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "pip install -e '.[train]'" in lines[0] and "train extra" in lines[0]
    assert any(f"({name} is not installed)" in lines[0] for name in missing.split(","))


def test_export_module_import_still_raises_without_torch():
    """Imported as a module (not run as a script) the missing dependency propagates, naming the extra."""
    probe = WITHOUT_MODULES.replace('runpy.run_path("export.py", run_name="__main__")', "import seqserve.model.export")
    proc = subprocess.run([sys.executable, "-c", probe, "torch"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "ModuleNotFoundError: seqserve.model needs the train extra (torch is not installed)" in proc.stderr


def test_corrupt_checkpoint_is_a_checkpoint_error(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="cannot read") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert export.main([str(path), "--name", "x", "--repository", str(tmp_path / "repo")]) == 1
    assert str(path) in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


def test_truncated_checkpoint_is_a_checkpoint_error(tiny_checkpoint, tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(tiny_checkpoint.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


def test_foreign_checkpoint_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a seqserve checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("change", [{"hidden_size": 32}, {"cell": "gru"}, {"num_layers": 2}, {"bidirectional": False}])
def test_checkpoint_weights_not_fitting_config(tiny_checkpoint, tmp_path, change):
    payload = torch.load(tiny_checkpoint, weights_only=True)
    payload["config"] = {**payload["config"], **change}
    path = tmp_path / "checkpoint.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not fit its config") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_checkpoint_with_invalid_config(tiny_checkpoint, tmp_path):
    payload = torch.load(tiny_checkpoint, weights_only=True)
    payload["config"] = {**payload["config"], "cell": "foo"}
    path = tmp_path / "checkpoint.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="invalid config: cell:"):
        load_checkpoint(path)


@pytest.mark.parametrize("key", ["config", "state_dict"])
def test_checkpoint_missing_a_key(tiny_checkpoint, tmp_path, key):
    payload = torch.load(tiny_checkpoint, weights_only=True)
    del payload[key]
    path = tmp_path / "checkpoint.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=key):
        load_checkpoint(path)


def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "sub" / "checkpoint.pt"
    model = write_checkpoint(path, cell="rnn", layers=2, bidirectional=False, attention="additive")
    loaded, extra = load_checkpoint(path)
    assert loaded.config == model.config and not loaded.training
    assert extra["epoch"] == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert not list(path.parent.glob("*.tmp"))


# ---------------------------------------------------------------- 9. the int8 variant, judged on test accuracy

JV_FEATURES, JV_LABELS = 12, tuple(str(i) for i in range(1, 10))
FP32_FILES = ["checkpoint.pt", "metadata.json", "model.onnx", "parity.json"]
SHARED_METADATA = ("format", "version", "architecture", "streaming", "inputs", "outputs", "class_labels",
                   "normalisation", "parameters", "training", "train_config", "checkpoint_sha256", "opset", "versions")


def write_jv_checkpoint(path: Path, **config) -> None:
    """A tiny untrained model shaped for JapaneseVowels (12 features, 9 speakers): its test accuracy can be measured."""
    write_checkpoint(path, layers=1, input_size=JV_FEATURES, num_classes=len(JV_LABELS), class_labels=JV_LABELS,
                     feature_mean=(0.0,) * JV_FEATURES, feature_std=(1.0,) * JV_FEATURES, **config)


def export_main(*argv: str) -> tuple[int, str]:
    """export.main in this process: (exit status, stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = export.main(list(argv))
    return status, out.getvalue()


@pytest.fixture(scope="module")
def int8_published(tmp_path_factory):
    """`export.py --int8` run once on a tiny JapaneseVowels bidirectional LSTM:
    (status, stdout, repository, checkpoint).

    Untrained, it scores about chance, and int8 noise may flip near-ties either way: the limit here is 1.
    """
    folder = tmp_path_factory.mktemp("int8")
    checkpoint, repository = folder / "checkpoint.pt", folder / "repo"
    write_jv_checkpoint(checkpoint, cell="lstm", bidirectional=True, attention="additive")
    status, stdout = export_main(str(checkpoint), "--name", "tiny_jv", "--version", "2", "--repository",
                                 str(repository), "--long-length", str(LONG), "--int8", "--int8-max-drop", "1")
    return status, stdout, repository, checkpoint


def test_int8_cli_publishes_both_folders(int8_published):
    status, stdout, repository, _ = int8_published
    assert status == 0
    assert sorted(p.name for p in (repository / "tiny_jv" / "2").iterdir()) == FP32_FILES
    assert sorted(p.name for p in (repository / "tiny_jv_int8" / "2").iterdir()) == ["metadata.json", "model.onnx"]
    assert staging_leftovers(repository) == []
    assert f"published {repository / 'tiny_jv' / '2'}" in stdout
    assert f"published {repository / 'tiny_jv_int8' / '2'}" in stdout


def test_int8_variant_keeps_the_contract(int8_published):
    _, _, repository, _ = int8_published
    fp32, int8 = read_version(repository / "tiny_jv" / "2"), read_version(repository / "tiny_jv_int8" / "2")
    assert (int8.name, int8.version, int8.precision) == ("tiny_jv_int8", 2, "int8")
    assert int8.architecture == fp32.architecture and int8.class_labels == fp32.class_labels
    arch = int8.architecture
    x, lengths = pad_batch(load_split("test").sequences[:5])
    feeds = {"x": x.numpy(), "lengths": lengths.numpy()}
    outputs = {}
    for version in (fp32, int8):
        session = make_session(version.model_file)
        assert [i.name for i in session.get_inputs()] == input_names(arch)
        assert [o.name for o in session.get_outputs()] == output_names(arch)
        outputs[version.precision] = dict(zip(output_names(arch), session.run(None, feeds), strict=True))
    for name, value in outputs["int8"].items():
        assert value.shape == outputs["fp32"][name].shape, name
        assert np.isfinite(value).all(), name
    ModelRuntime(int8, threads=1).warm_up()  # what the server does with every version: contract check, warm-up


def test_int8_metadata_records_both_measured_accuracies(int8_published):
    """Both accuracies are re-measured here independently: fp32 in PyTorch, int8 batch by batch in onnxruntime."""
    _, _, repository, checkpoint = int8_published
    fp32, int8 = read_version(repository / "tiny_jv" / "2"), read_version(repository / "tiny_jv_int8" / "2")
    meta, q = int8.metadata, int8.metadata["quantization"]
    data = load_split("test")
    model, _ = load_checkpoint(checkpoint)
    x, lengths = pad_batch(data.sequences)
    with torch.no_grad():
        torch_predictions = model(x, lengths).logits.argmax(1).numpy()  # (N,)
    session = make_session(int8.model_file)
    int8_predictions = []
    for start in range(0, len(data), ACCURACY_BATCH):  # int8 activations are quantized per call: same batches
        xb, lengths_b = pad_batch(data.sequences[start : start + ACCURACY_BATCH])  # (B, T, F), (B,)
        (logits,) = session.run(["logits"], {"x": xb.numpy(), "lengths": lengths_b.numpy()})  # (B, C)
        int8_predictions.append(logits.argmax(1))
    int8_predictions = np.concatenate(int8_predictions)  # (N,)
    assert q["test_sequences"] == len(data) == 370
    assert q["fp32_test_accuracy"] == float((torch_predictions == data.targets).mean())
    assert q["int8_test_accuracy"] == float((int8_predictions == data.targets).mean())
    assert q["accuracy_drop"] == pytest.approx(q["fp32_test_accuracy"] - q["int8_test_accuracy"], abs=1e-12)
    assert q["max_accuracy_drop"] == 1.0
    assert q["max_abs_logits_difference_vs_fp32"] > 0.0
    assert q["source"] == {"name": "tiny_jv", "version": 2, "onnx_sha256": fp32.metadata["onnx_sha256"]}
    assert int8.test_accuracy == q["int8_test_accuracy"]
    assert "parity" not in meta and (meta["precision"], fp32.metadata["precision"]) == ("int8", "fp32")
    assert meta["name"] == "tiny_jv_int8" and "tiny_jv v2" in meta["description"]
    assert meta["onnx_sha256"] == sha256_of(int8.model_file) != fp32.metadata["onnx_sha256"]
    for key in SHARED_METADATA:
        assert meta[key] == fp32.metadata[key], key


def test_int8_lstm_runs_its_recurrence_in_int8(int8_published):
    _, _, repository, _ = int8_published
    int8 = read_version(repository / "tiny_jv_int8" / "2")
    ops = Counter(n.op_type for n in onnx.load(str(int8.model_file)).graph.node)
    assert ops["DynamicQuantizeLSTM"] == 1 and ops["LSTM"] == 0
    assert ops["MatMulInteger"] > 0
    assert int8.metadata["quantization"]["ops"] == dict(ops)
    assert int8.metadata["quantization"]["recurrent_layers_quantized"] is True


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_int8_of_a_streaming_model(cell, tmp_path):
    """Streaming models take h0 (and c0): the accuracy runs feed zeros. GRU has no int8 kernel: it stays fp32."""
    checkpoint, repository = tmp_path / "checkpoint.pt", tmp_path / "repo"
    write_jv_checkpoint(checkpoint, cell=cell, bidirectional=False, attention="none", step_logits=True)
    export.publish(checkpoint, repository, "stream", 1, long_length=LONG)
    comparison = export.publish_int8(read_version(repository / "stream" / "1"), repository, max_drop=1.0)
    int8 = read_version(repository / "stream_int8" / "1")
    q = int8.metadata["quantization"]
    assert (q["fp32_test_accuracy"], q["int8_test_accuracy"]) == (comparison.fp32_accuracy, comparison.int8_accuracy)
    assert [s.name for s in int8.inputs] == (["x", "lengths", "h0", "c0"] if cell == "lstm" else ["x", "lengths", "h0"])
    if cell == "lstm":
        assert q["ops"]["DynamicQuantizeLSTM"] == 1 and q["recurrent_layers_quantized"] is True
    else:
        assert q["ops"]["GRU"] == 1 and q["ops"]["MatMulInteger"] > 0 and q["recurrent_layers_quantized"] is False
    ModelRuntime(int8, threads=1).warm_up()


def test_int8_gate_refuses_through_the_cli(int8_published, tmp_path, capsys):
    """The float32 model passed its own gate and stays; the int8 variant is not written."""
    checkpoint, repository = int8_published[3], tmp_path / "repo"
    status, _ = export_main(str(checkpoint), "--name", "tiny_jv", "--repository", str(repository),
                            "--long-length", str(LONG), "--int8", "--int8-max-drop", "-1")
    assert status == 1
    err = capsys.readouterr().err
    assert "test accuracy drops by" in err and "limit -1.0000" in err and "tiny_jv_int8 not published" in err
    assert read_version(repository / "tiny_jv" / "1").precision == "fp32"
    assert not (repository / "tiny_jv_int8").exists()
    assert staging_leftovers(repository) == []


def test_int8_gate_raises_an_accuracy_drop_error(int8_published, tmp_path):
    source = read_version(int8_published[2] / "tiny_jv" / "2")
    repository = tmp_path / "repo"
    with pytest.raises(AccuracyDropError, match=r"drops by -?\d\.\d{4} \(.*\), more than the limit -0\.5000"):
        export.publish_int8(source, repository, max_drop=-0.5)
    _assert_nothing_published(repository, "tiny_jv_int8")


def test_int8_existing_variant_is_refused_before_anything_is_written(int8_published, tmp_path, capsys):
    _, _, published, checkpoint = int8_published
    repository = tmp_path / "repo"
    shutil.copytree(published / "tiny_jv_int8", repository / "tiny_jv_int8")
    status, _ = export_main(str(checkpoint), "--name", "tiny_jv", "--version", "2", "--repository", str(repository),
                            "--int8")
    assert status == 1
    err = capsys.readouterr().err
    assert str(repository / "tiny_jv_int8" / "2") in err and "--overwrite" in err
    assert not (repository / "tiny_jv").exists()


def test_int8_of_a_model_made_for_other_data(tiny_checkpoint, tmp_path, capsys):
    repository = tmp_path / "repo"
    status, _ = export_main(str(tiny_checkpoint), "--name", "tiny", "--repository", str(repository),
                            "--long-length", str(LONG), "--int8")
    assert status == 1
    err = capsys.readouterr().err
    assert "JapaneseVowels test split" in err and "JapaneseVowels has 12 features, the model takes 5" in err
    assert not (repository / "tiny_int8").exists()
    assert staging_leftovers(repository) == []


def test_server_and_cli_list_show_the_int8_variant(int8_published, capsys):
    """`seqserve.cli list`: the int8 row shows its own measured accuracy, and "int8" where fp32 shows parity."""
    repository = int8_published[2]
    int8_accuracy = read_version(repository / "tiny_jv_int8" / "2").metadata["quantization"]["int8_test_accuracy"]
    with threaded_server(repository) as server:
        with SeqserveClient(server.target) as client:
            fp32, int8 = client.get_model("tiny_jv"), client.get_model("tiny_jv_int8")
        assert seqserve.cli.main(["--server", server.target, "list"]) == 0
    assert int8.precision == "int8" and not int8.HasField("parity")
    assert int8.test_accuracy == int8_accuracy
    assert fp32.precision == "fp32" and fp32.HasField("parity") and fp32.parity.passed
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["tiny_jv_int8"][-2:] == [f"{int8_accuracy:.4f}", "int8"]
    assert rows["tiny_jv"][-1] == f"{fp32.parity.max_abs_error:.1e}"
