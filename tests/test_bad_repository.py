"""One bad entry in the model repository is reported and skipped; the rest serve.

Each case copies model_repository into tmp_path, adds one bad entry (usually a copy of a good version
under the model name `broken`, then spoiled), starts a real server on it and checks that ListModels
answers OK with the three committed models, and that the problem, in `registry.problems` and in the
log, names the file (or folder) and the field.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from servers import REPOSITORY, threaded_server

from seqserve.client import SeqserveClient
from seqserve.contract import input_specs, output_specs
from seqserve.repository import latest_version, sha256_of
from seqserve.server.runtime import ModelRuntime

SERVED = ["jv_bigru_attn", "jv_bilstm_attn", "jv_lstm_stream"]
NOT_SERVED = ("checkpoint.pt", "parity.json", "*.png")  # the server reads model.onnx and metadata.json only


@pytest.fixture()
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(REPOSITORY, root, ignore=shutil.ignore_patterns(*NOT_SERVED))
    return root


def copy_version(root: Path, model: str = "broken", version: str = "1", source: str = "jv_bigru_attn") -> Path:
    """A copy of a committed version at `root`/`model`/`version`, good until spoiled."""
    folder = root / model / version
    shutil.copytree(root / source / "1", folder)
    return folder


def edit_metadata(folder: Path, edit: Callable[[dict], None]) -> Path:
    path = folder / "metadata.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))
    return path


def serve_and_check(root: Path, caplog: pytest.LogCaptureFixture, problem: str, served: list[str] = SERVED) -> str:
    """Start a server on `root`: ListModels answers OK with `served`; exactly one problem starts with
    `problem`, and it is logged. Returns that problem."""
    with caplog.at_level(logging.ERROR, logger="server.registry"), threaded_server(root) as s, \
            SeqserveClient(s.target) as c:
        assert [m.name for m in c.list_models()] == served
        problems = s.server.registry.problems
    matching = [p for p in problems if p.startswith(problem)]
    assert len(matching) == 1, (problem, problems)
    logged = [r.problem for r in caplog.records if r.getMessage() == "model skipped"]
    assert matching[0] in logged, logged
    return matching[0]


# ---------------------------------------------------------------- wrong values in metadata.json


def _set(section: str | None, key: str, value: object) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        (data[section] if section else data)[key] = value

    return edit


WRONG_VALUES = {  # case -> (edit, field and message)
    "null hidden_size": (_set("architecture", "hidden_size", None),
                         "architecture.hidden_size: expected an integer, got null"),
    "string hidden_size": (_set("architecture", "hidden_size", "64"),
                           "architecture.hidden_size: expected an integer, got the string '64'"),
    "null num_layers": (_set("architecture", "num_layers", None), "architecture.num_layers: expected an integer"),
    "num_layers past int32": (_set("architecture", "num_layers", 2**40),
                              "architecture.num_layers: expected a value from 1 to 2147483647"),
    "null parity number": (_set("parity", "max_abs_error", None),
                           "parity.max_abs_error: expected a finite number, got null"),
    "string parity number": (_set("parity", "atol", "small"),
                             "parity.atol: expected a finite number, got the string 'small'"),
    "string parity cases": (_set("parity", "cases", "8"), "parity.cases: expected an integer, got the string '8'"),
    "cases past int32": (_set("parity", "cases", 2**31), "parity.cases: expected a value from 0 to 2147483647"),
    "null test accuracy": (_set("training", "test_accuracy", None),
                           "training.test_accuracy: expected a finite number, got null"),
    "string version": (_set(None, "version", "1"), "version: expected an integer, got the string '1'"),
    "version past int64": (_set(None, "version", 2**64), "version: expected an integer within int64"),
    "null class label": (_set(None, "class_labels", [None] * 9), "class_labels[0]: expected a string, got null"),
    "unknown cell": (_set("architecture", "cell", "transformer"),
                     "architecture.cell: expected one of 'rnn', 'lstm', 'gru', got the string 'transformer'"),
    "unknown field": (_set(None, "colour", "blue"), "colour: unknown field"),
    "missing field": (lambda data: data["architecture"].pop("hidden_size"), "architecture.hidden_size: missing field"),
}


@pytest.mark.parametrize("case", WRONG_VALUES)
def test_a_wrong_value_in_metadata_is_skipped_and_named(repo, caplog, case):
    edit, message = WRONG_VALUES[case]
    path = edit_metadata(copy_version(repo), edit)
    serve_and_check(repo, caplog, f"{path}: {message}")


# ---------------------------------------------------------------- odd folder names


@pytest.mark.parametrize("name", ["bad name", "-dash", "x" * 65, "modèle", "a+"])
def test_a_bad_model_folder_name_is_skipped_and_named(repo, caplog, name):
    copy_version(repo, model=name)
    serve_and_check(repo, caplog, f"{repo / name}: not a model name ([A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}); skipped")


@pytest.mark.parametrize("version", ["١", "9223372036854775808", "99999999999999999999", "+1", " 1", "1 ", "01", "0",
                                     "1.0", "latest"])
def test_an_odd_version_folder_is_skipped_and_named(repo, caplog, version):
    """Versions are ASCII digits without sign, spaces or leading zeros, from 1 to 2^63-1 (0 asks for the latest)."""
    copy_version(repo, version=version)
    serve_and_check(repo, caplog, f"{repo / 'broken' / version}: not a version number")


def test_the_largest_version_serves(repo, caplog):
    copy_version(repo, model="jv_bigru_attn", version=str(2**63 - 1))
    with threaded_server(repo) as s, SeqserveClient(s.target) as c:
        assert [m.name for m in c.list_models()] == SERVED
        assert c.get_model("jv_bigru_attn").version == 2**63 - 1
        assert s.server.registry.problems == []


# ---------------------------------------------------------------- symlinks


def test_a_model_folder_linking_out_of_the_repository_is_skipped(repo, tmp_path, caplog):
    outside = tmp_path / "elsewhere"
    shutil.copytree(repo / "jv_bigru_attn", outside)  # a valid model, but not in the repository
    (repo / "escape").symlink_to(outside, target_is_directory=True)
    problem = serve_and_check(repo, caplog,
                              f"{repo / 'escape'}: a symlink to {outside.resolve()}, outside the repository")
    assert problem.endswith("; skipped")


def test_version_folder_and_file_links_out_of_the_repository_are_skipped(repo, tmp_path, caplog):
    outside = tmp_path / "elsewhere"
    shutil.copytree(repo / "jv_bigru_attn" / "1", outside)
    (repo / "jv_bigru_attn" / "2").symlink_to(outside, target_is_directory=True)
    serve_and_check(repo, caplog, f"{repo / 'jv_bigru_attn' / '2'}: a symlink to {outside.resolve()}, outside")
    (repo / "jv_bigru_attn" / "2").unlink()
    folder = copy_version(repo, model="jv_bigru_attn", version="2")
    link = folder / "model.onnx"
    link.unlink()
    link.symlink_to(outside / "model.onnx")
    serve_and_check(repo, caplog, f"{link}: a symlink to {(outside / 'model.onnx').resolve()}, outside")


def test_a_broken_symlink_is_skipped_and_named(repo, tmp_path, caplog):
    (repo / "gone").symlink_to(repo / "nowhere", target_is_directory=True)
    serve_and_check(repo, caplog, f"{repo / 'gone'}: a symlink to {(repo / 'nowhere').resolve()}, which does not exist")


def test_a_symlink_inside_the_repository_is_an_alias(repo, caplog):
    """A link that stays inside the repository serves its target under the link's name."""
    (repo / "speaker").symlink_to("jv_lstm_stream", target_is_directory=True)
    with threaded_server(repo) as s, SeqserveClient(s.target) as c:
        assert [m.name for m in c.list_models()] == [*SERVED, "speaker"]
        assert s.server.registry.problems == []
        assert c.get_model("speaker").streaming


def test_skipped_folders_are_named_and_hidden_ones_passed_over(repo, caplog):
    (repo / "empty").mkdir()
    (repo / ".staging-abc" / "1").mkdir(parents=True)  # export.py building a version: not a problem
    (repo / "README.md").write_text("files beside the models are passed over\n")
    serve_and_check(repo, caplog, f"{repo / 'empty'}: no version folders; skipped")


# ---------------------------------------------------------------- a model that loads but cannot run


def write_failing_model(folder: Path) -> None:
    """model.onnx with the contract's inputs and outputs that onnxruntime loads, but whose first run fails:
    it reshapes x (B, T, F) to (7, -1), and the warm-up shapes hold no multiple of 7 elements."""
    onnx = pytest.importorskip("onnx", reason="writing an ONNX graph by hand needs the onnx package (train extra)")
    from onnx import TensorProto, helper

    arch = latest_version(REPOSITORY, "jv_bigru_attn").architecture
    elem = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64}
    inputs = [helper.make_tensor_value_info(s.name, elem[s.dtype], list(s.shape)) for s in input_specs(arch)]
    outputs = [helper.make_tensor_value_info(s.name, TensorProto.FLOAT, ["rows", "cols"]) for s in output_specs(arch)]
    nodes = [helper.make_node("Reshape", ["x", "seven_rows"], ["r"])]
    nodes += [helper.make_node("Identity", ["r"], [s.name]) for s in output_specs(arch)]
    seven_rows = helper.make_tensor("seven_rows", TensorProto.INT64, [2], [7, -1])
    graph = helper.make_graph(nodes, "fails_at_run_time", inputs, outputs, initializer=[seven_rows])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, folder / "model.onnx")
    edit_metadata(folder, _set(None, "onnx_sha256", sha256_of(folder / "model.onnx")))


def test_a_model_failing_its_warm_up_run_is_skipped(repo, caplog):
    folder = copy_version(repo)
    write_failing_model(folder)
    serve_and_check(repo, caplog, f"{folder / 'model.onnx'}: warm-up run failed: ")


def test_any_error_in_warm_up_skips_only_that_version(repo, caplog, monkeypatch):
    real_run = ModelRuntime.run

    def run(self, inputs):
        if self.name == "jv_lstm_stream":
            raise RuntimeError("simulated: out of memory")
        return real_run(self, inputs)

    monkeypatch.setattr(ModelRuntime, "run", run)
    model_file = repo / "jv_lstm_stream" / "1" / "model.onnx"
    serve_and_check(repo, caplog, f"{model_file}: warm-up run failed: simulated: out of memory",
                    served=["jv_bigru_attn", "jv_bilstm_attn"])


def test_every_kind_at_once(repo, tmp_path, caplog):
    """All of the above in one repository: still the three committed models, one problem per bad entry."""
    edit_metadata(copy_version(repo, model="nulls"), _set("architecture", "hidden_size", None))
    copy_version(repo, model="bad name")
    copy_version(repo, model="odd", version="١")
    (repo / "escape").symlink_to(tmp_path, target_is_directory=True)
    write_failing_model(copy_version(repo, model="fails"))
    with threaded_server(repo) as s, SeqserveClient(s.target) as c:
        assert [m.name for m in c.list_models()] == SERVED
        assert len(s.server.registry.problems) == 5, s.server.registry.problems
        assert os.fspath(repo) in s.server.registry.problems[0]
