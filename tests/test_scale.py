"""Scale-out: gRPC's own balancing and retries (seqserve.channel), the replica's name on every answer,
the proxy's gRPC health check, and docker-compose.scale.yml for real.

Without an engine: the channel's service config; round_robin over several in-process servers (an
`ipv4:` target with one address per server), a draining replica's UNAVAILABLE retried on another by
gRPC alone; the `seqserve-replica` trailer on unary and streaming calls, failed ones too; the batch script's
--retries bound; HAProxy's hand-written HTTP/2 health check sent to a real server (SERVING and
NOT_SERVING); `config` of the scale override by every Compose found (test_docker.py lints the proxy's
Dockerfile). With an engine (`bash ../shared/tools/docker-harness.sh` as root): 3 replicas behind
HAProxy, with 300 calls spread over all 3 (told by the `seqserve-replica` trailer and by HAProxy's
per-replica metrics), the direct dns:/// route from a container on the Compose network, a
StreamSequence continued on another replica equal to one full run, a replica SIGKILLed under load
(through the proxy, then through dns:///) without a lost call and restarted by Docker, and the plain
`docker compose down --remove-orphans` taking the proxy down with the replicas.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import scale_load
import yaml
from grpc_health.v1 import health_pb2
from servers import ROOT, ThreadedServer, free_port, threaded_server
from test_docker import (
    BUILD_TIMEOUT_S,
    COMPOSE_FILE,
    COMPOSE_NAMES,
    COMPOSES,
    TEST_IMAGE,
    ComposeProject,
    build_images,
    docker_engine,
    inspect,
    published,
    run,
    wait_healthy,
)

from seqserve.batch import cli as batch_infer
from seqserve.batch.backends import RemoteBackend, checked_call
from seqserve.batch.errors import BackendError, RecordRejected
from seqserve.batch.records import Record, Records
from seqserve.channel import MAX_RETRIES, SERVICE, Retries, open_channel, service_config
from seqserve.client import SeqserveClient, encode_request
from seqserve.server.admission import REPLICA_KEY
from seqserve.tensors import to_tensor
from seqserve.v1 import seqserve_pb2 as pb

SCALE_OVERRIDE = ROOT / "docker-compose.scale.yml"
SCALE_ENV = ROOT / "deploy" / "compose" / "scale.env"
PROXY_DIR = ROOT / "deploy" / "compose" / "haproxy"
HAPROXY_CFG = PROXY_DIR / "haproxy.cfg"
MODEL = "jv_bilstm_attn"
STREAM_MODEL = "jv_lstm_stream"
FEATURES = 12
REPLICAS = 3
FAST = Retries(initial_backoff_s=0.01, max_backoff_s=0.05)  # the policy's shape, without its waits
__all__ = ["docker_engine"]  # a fixture of test_docker.py, used here


def sequences(count: int, length: int = 20, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(length, FEATURES)).astype(np.float32) for _ in range(count)]


def replica_of(call: grpc.Call) -> str | None:
    return dict(call.trailing_metadata() or ()).get(REPLICA_KEY)


def ipv4_target(servers: list[ThreadedServer]) -> str:
    """One gRPC target over several servers: what a DNS name with one address per replica resolves to."""
    return "ipv4:" + ",".join(s.target for s in servers)


# --- the channel: service config, balancing, retries ---------------------------------------------------

def test_service_config_balances_round_robin_and_retries_unavailable_only():
    config = json.loads(service_config())
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    [method] = config["methodConfig"]
    assert method["name"] == [{"service": SERVICE}]  # seqserve's RPCs only: health checks are never retried
    assert method["retryPolicy"] == {"maxAttempts": MAX_RETRIES + 1, "initialBackoff": "0.05s", "maxBackoff": "1.0s",
                                     "backoffMultiplier": 2.0, "retryableStatusCodes": ["UNAVAILABLE"]}
    assert "retryPolicy" not in json.loads(service_config(Retries(0)))["methodConfig"][0]
    with pytest.raises(ValueError, match="0..4"):
        Retries(MAX_RETRIES + 1)  # gRPC would clamp it to 5 attempts silently (a log line, no error)


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[ThreadedServer]]:
    """Three in-process servers named r0, r1, r2."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(threaded_server(warmup=False, replica=f"r{i}")) for i in range(REPLICAS)]


def set_draining(server: ThreadedServer, draining: bool) -> None:
    server.sync(lambda: setattr(server.server.admission, "draining", draining))


def encode_replicas(client: SeqserveClient, calls: int) -> collections.Counter:
    """Who answered each of `calls` Encode calls."""
    request = encode_request(MODEL, sequences(2))
    answered: collections.Counter = collections.Counter()
    for _ in range(calls):
        _, call = client.stub.Encode.with_call(request, timeout=30)
        answered[replica_of(call)] += 1
    return answered


def test_round_robin_spreads_calls_over_every_address(replicas):
    with SeqserveClient(ipv4_target(replicas)) as client:
        client.wait_ready()
        encode_replicas(client, REPLICAS)  # until every subchannel has connected
        answered = encode_replicas(client, 30)
    assert answered == {"r0": 10, "r1": 10, "r2": 10}


def test_a_draining_replicas_unavailable_is_retried_on_another(replicas):
    set_draining(replicas[0], True)
    try:
        with SeqserveClient(ipv4_target(replicas), channel=open_channel(ipv4_target(replicas), retries=FAST)) as client:
            client.wait_ready()
            answered = encode_replicas(client, 30)
        assert sum(answered.values()) == 30 and set(answered) == {"r1", "r2"}
        # The same without retries: the drained replica's share fails.
        with SeqserveClient("", channel=open_channel(ipv4_target(replicas), retries=Retries(0))) as client:
            client.wait_ready()
            with pytest.raises(grpc.RpcError) as failed:
                encode_replicas(client, 30)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        set_draining(replicas[0], False)


def test_the_batch_backend_rides_out_a_draining_replica(replicas):
    set_draining(replicas[1], True)
    try:
        backend = RemoteBackend(ipv4_target(replicas), MODEL, retries=FAST, timeout=30)
        try:
            records = Records.of([Record(index=i, id=str(i), steps=steps) for i, steps in enumerate(sequences(4))],
                                 FEATURES)
            for _ in range(10):
                assert backend.infer(records).ids == ["0", "1", "2", "3"]
        finally:
            backend.close()
    finally:
        set_draining(replicas[1], False)


class Failure(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "test"


def failing(code: grpc.StatusCode):
    def call():
        raise Failure(code)

    return call


def test_what_still_fails_after_grpc_retried_is_mapped_once():
    with pytest.raises(BackendError, match="retried it up to 4 times"):
        checked_call(failing(grpc.StatusCode.UNAVAILABLE), "Encode", Retries())
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE):
        with pytest.raises(RecordRejected, match=code.name):
            checked_call(failing(code), "Encode", Retries())
    with pytest.raises(BackendError, match="INTERNAL"):
        checked_call(failing(grpc.StatusCode.INTERNAL), "Encode", Retries())


def test_batch_script_retries_are_bounded_by_grpcs_cap(capsys):
    parser = batch_infer.build_parser()
    base = ["--model", MODEL, "--input", "x.jsonl", "--output", "y.jsonl", "--server", "dns:///seqserve:50051"]
    assert parser.parse_args(base).retries == MAX_RETRIES
    assert parser.parse_args([*base, "--retries", "0"]).retries == 0
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--retries", str(MAX_RETRIES + 1)])
    assert "invalid choice" in capsys.readouterr().err


# --- the replica's name ---------------------------------------------------------------------------------

def test_replica_named_in_the_trailers_of_unary_and_streaming_calls(replicas):
    server = replicas[0]
    with SeqserveClient(server.target) as client:
        _, call = client.stub.ListModels.with_call(pb.ListModelsRequest(), timeout=10)
        assert replica_of(call) == "r0"
        whole = pb.StreamSequenceRequest(model=STREAM_MODEL, steps=to_tensor(sequences(1)[0]), end=True)
        stream = client.stub.StreamSequence(iter([whole]), timeout=10)
        assert [answer.final for answer in stream] == [True]
        assert replica_of(stream) == "r0"
        tagged = iter([pb.EncodeStreamRequest(request_id="a", request=encode_request(MODEL, sequences(1)))])
        encode_stream = client.stub.EncodeStream(tagged, timeout=10)
        assert [answer.request_id for answer in encode_stream] == ["a"]
        assert replica_of(encode_stream) == "r0"
        # Failures too: a refused call, and a draining replica's UNAVAILABLE.
        with pytest.raises(grpc.RpcError) as refused:
            client.stub.GetModel(pb.GetModelRequest(model="no_such_model"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND and replica_of(refused.value) == "r0"
        set_draining(server, True)
        try:
            with pytest.raises(grpc.RpcError) as drained:
                client.stub.ListModels(pb.ListModelsRequest(), timeout=10)
        finally:
            set_draining(server, False)
        assert drained.value.code() == grpc.StatusCode.UNAVAILABLE and replica_of(drained.value) == "r0"


def test_replica_name_defaults_to_the_hostname():
    with threaded_server(warmup=False) as server:
        assert server.server.admission.replica == socket.gethostname()


# --- the proxy's health check -----------------------------------------------------------------------------

def haproxy_check() -> tuple[bytes, bytes]:
    """(what HAProxy sends, what a healthy answer holds) from haproxy.cfg's tcp-check lines."""
    text = HAPROXY_CFG.read_text()
    [send] = re.findall(r"^\s*tcp-check send-binary ([0-9a-f]+)$", text, re.M)
    [expect] = re.findall(r"^\s*tcp-check expect binary ([0-9a-f]+)$", text, re.M)
    return bytes.fromhex(send), bytes.fromhex(expect)


def h2_answer(port: int, request: bytes, until: bytes, timeout: float = 3.0) -> bytes:
    """Send raw bytes to a server and read its answer until `until` shows up, it closes, or `timeout` passes."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(request)
        deadline = time.monotonic() + timeout
        while until not in answer and time.monotonic() < deadline:
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            answer += chunk
    return answer


def test_haproxy_health_check_tells_serving_from_not_serving():
    request, serving = haproxy_check()
    assert serving == b"\x00" + (2).to_bytes(4, "big") + b"\x08" + bytes([health_pb2.HealthCheckResponse.SERVING])
    not_serving = serving[:-1] + bytes([health_pb2.HealthCheckResponse.NOT_SERVING])
    with threaded_server(warmup=False) as server:
        assert serving in h2_answer(server.server.port, request, serving)
        server.call(server.server.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING))
        answer = h2_answer(server.server.port, request, not_serving)
        assert not_serving in answer and serving not in answer


# --- Compose ------------------------------------------------------------------------------------------------

def scale_files() -> list[str]:
    return ["--env-file", str(SCALE_ENV), "-f", str(COMPOSE_FILE), "-f", str(SCALE_OVERRIDE)]


@pytest.mark.parametrize("compose", COMPOSE_NAMES)
def test_scale_override_is_valid(compose):
    if compose not in COMPOSES:
        pytest.skip("neither docker-compose nor `docker compose` found")
    command, _ = COMPOSES[compose]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQSERVE_")}  # scale.env's defaults
    services = yaml.safe_load(run([*command, *scale_files(), "config"], env=env).stdout)["services"]
    assert set(services) - {"batch"} == {"proxy", "server"}  # (docker-compose 1.29 lists profiled services too)
    server, proxy = services["server"], services["proxy"]
    assert server["scale"] == REPLICAS
    assert str(server["environment"]["SEQSERVE_DRAIN_SECONDS"]) == "5"
    assert {published(p) for p in server["ports"]} == {"127.0.0.1:50061-50070->50051", "127.0.0.1:8001-8010->8000"}
    assert {published(p) for p in proxy["ports"]} == {"127.0.0.1:50051->50051", "127.0.0.1:8404->8404"}  # loopback
    assert proxy["depends_on"]["server"]["condition"] == "service_healthy"


# --- for real: 3 replicas behind HAProxy ----------------------------------------------------------------------

LOAD_SCRIPT = Path(__file__).with_name("scale_load.py")
SCALE_COMPOSE = "v1" if "v1" in COMPOSES else "v2"  # one Compose for the real run (both validate the files above)
KILL_AFTER_S = 2.0  # into the load, so calls are in flight on the replica that dies


class ScaleProject(ComposeProject):
    """The Compose project with docker-compose.scale.yml (and its env file) over docker-compose.yml."""

    def __call__(self, *args: str, timeout: float = 300.0, check: bool = True) -> subprocess.CompletedProcess:
        return run([*self.command, *scale_files(), "-p", self.name, *args], env=self.env, timeout=timeout,
                   check=check)

    def replicas(self) -> list[str]:
        """The server containers' ids."""
        return sorted(self("ps", "-q", "server").stdout.split())

    @property
    def network(self) -> str:
        return f"{self.name}_default"


def hostname(container: str) -> str:
    """The replica's default name (its hostname: the container id's first 12 characters)."""
    return run(["docker", "inspect", "--format", "{{.Config.Hostname}}", container]).stdout.strip()


def direct_target(container: str) -> str:
    """A replica's own published gRPC port on this host (scale.env publishes each on loopback)."""
    return run(["docker", "port", container, "50051/tcp"]).stdout.split()[0]


@pytest.fixture(scope="module")
def stack(docker_engine) -> Iterator[ScaleProject]:
    if SCALE_COMPOSE not in COMPOSES:
        pytest.fail("a Docker engine answers but no Compose was found (../shared/tools/docker-harness.sh installs "
                    "docker-compose 1.29)")
    command, _ = COMPOSES[SCALE_COMPOSE]
    env = {
        **os.environ,
        "SEQSERVE_IMAGE": TEST_IMAGE,
        "SEQSERVE_IMAGE_TAG": "latest",
        "SEQSERVE_PROXY_HOST_PORT": f"127.0.0.1:{free_port()}",
        "SEQSERVE_PROXY_STATS_HOST_PORT": f"127.0.0.1:{free_port()}",
        "SEQSERVE_GRPC_HOST_PORT": "127.0.0.1:",  # "127.0.0.1::50051": any free port, per replica
        "SEQSERVE_METRICS_HOST_PORT": "127.0.0.1:",
    }
    project = ScaleProject(command, f"seqserve-scale-{uuid.uuid4().hex[:8]}", env)
    try:
        build_images(project, (f"{TEST_IMAGE}:latest", f"{TEST_IMAGE}-proxy:latest"))
        started = time.monotonic()
        project("up", "-d")  # returns once every replica is healthy (the proxy depends on it)
        for container in [*project.replicas(), project.container("proxy")]:
            wait_healthy(container)
        print(f"up, healthy: {time.monotonic() - started:.1f} s")
        yield project
    finally:
        logs = project("logs", "--no-color", check=False)
        print(f"--- {project.name} logs\n{logs.stdout[-20000:]}{logs.stderr[-5000:]}")  # shown when a test failed
        project("down", "--volumes", "--remove-orphans", "--timeout", "20", check=False)


def proxy_target(stack: ScaleProject) -> str:
    return stack.env["SEQSERVE_PROXY_HOST_PORT"]


def proxy_answers_per_replica(stack: ScaleProject) -> dict[str, float]:
    """HAProxy's 2xx answers per backend server slot, from its Prometheus exporter."""
    url = f"http://{stack.env['SEQSERVE_PROXY_STATS_HOST_PORT']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    pattern = r'^haproxy_server_http_responses_total\{proxy="replicas",server="([^"]+)",code="2xx"\} (\S+)$'
    return {slot: float(value) for slot, value in re.findall(pattern, text, re.M) if float(value) > 0}


def load_command_on_network(stack: ScaleProject) -> list[str]:
    """scale_load.py in a throwaway container of the serving image on the stack's network."""
    return ["docker", "run", "--rm", "--network", stack.network, "-v", f"{LOAD_SCRIPT}:/scale_load.py:ro",
            "--entrypoint", "python", f"{TEST_IMAGE}:latest", "/scale_load.py"]


def load_command_here() -> list[str]:
    return [sys.executable, str(LOAD_SCRIPT)]


def run_load(command: list[str], target: str, *args: str, during: Callable[[], None] = lambda: None) -> dict:
    """Run scale_load.py; `during` runs once it has connected and answered. Returns its tally."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([*command, target, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        ready = proc.stdout.readline().strip()
        assert ready == "ready", f"load client: {ready!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        during()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    return json.loads(out.splitlines()[-1])


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S + 300)
def test_300_calls_spread_over_all_3_replicas(stack):
    names = {hostname(c) for c in stack.replicas()}
    assert len(names) == REPLICAS
    before = proxy_answers_per_replica(stack)
    with SeqserveClient(proxy_target(stack)) as client:  # through HAProxy, from this host
        client.wait_ready(timeout=30)
        tally = scale_load.count_calls(client, 300)
    after = proxy_answers_per_replica(stack)
    print(f"through the proxy: {dict(tally.answered)}; HAProxy's 2xx per slot: {after}")
    assert tally.failed == [] and sum(tally.answered.values()) == 300
    assert set(tally.answered) == names
    assert min(tally.answered.values()) >= 300 // REPLICAS // 2  # round robin: ~100 each
    grown = {slot: after[slot] - before.get(slot, 0.0) for slot in after}
    assert sorted(grown.values()) == sorted(float(n) for n in tally.answered.values())  # one slot per replica

    # The direct route, for clients that balance themselves: gRPC's round_robin over what Docker's DNS answers.
    direct = run_load(load_command_on_network(stack), "dns:///server:50051", "--calls", "30")
    print(f"dns:///server:50051 from a container: {direct}")
    assert direct["failed"] == [] and set(direct["answered"]) == names
    assert sorted(direct["answered"].values()) == [10, 10, 10]


@pytest.mark.docker
@pytest.mark.slow
def test_stream_state_from_one_replica_continues_on_another(stack):
    first, second, third = (direct_target(c) for c in stack.replicas())
    sequence = sequences(1, length=29, seed=3)[0]
    head, tail = sequence[:11], sequence[11:]
    outputs = ["outputs", "hidden", "step_logits"]
    with SeqserveClient(first) as a, SeqserveClient(second) as b, SeqserveClient(third) as c:
        answered_by = {replica_of(client.stub.ListModels.with_call(pb.ListModelsRequest(), timeout=10)[1])
                       for client in (a, b, c)}
        assert len(answered_by) == 3  # three different replicas
        [started] = list(a.stream_sequence(STREAM_MODEL, [head], outputs=outputs))
        [continued] = list(b.stream_sequence(STREAM_MODEL, [tail], initial_state=started.state, outputs=outputs))
        [full] = c.encode(STREAM_MODEL, [sequence], outputs=outputs)
    assert continued.steps_seen == len(sequence) and continued.final
    np.testing.assert_array_equal(np.concatenate([started.result.outputs, continued.result.outputs]), full.outputs)
    np.testing.assert_array_equal(np.concatenate([started.result.step_logits, continued.result.step_logits]),
                                  full.step_logits)
    np.testing.assert_array_equal(continued.result.h_n, full.h_n)
    np.testing.assert_array_equal(continued.result.c_n, full.c_n)
    np.testing.assert_array_equal(continued.result.probabilities, full.probabilities)
    assert continued.result.label == full.label


def crash(container: str) -> None:
    """SIGKILL the replica's server process from this host, as the kernel's OOM killer or a crash would end it.

    (`docker kill` would be a manual stop, which Docker's restart policy leaves stopped.)"""
    os.kill(inspect(container)["State"]["Pid"], signal.SIGKILL)


def kill_one_replica_under_load(stack: ScaleProject, command: list[str], target: str) -> None:
    """8 threads of calls for 8 s; a replica that is answering them is SIGKILLed 2 s in. No call may fail,
    and the replica comes back (restart: unless-stopped)."""
    victim = stack.replicas()[0]
    name = hostname(victim)

    def kill() -> None:
        time.sleep(KILL_AFTER_S)
        crash(victim)

    tally = run_load(command, target, "--seconds", "8", "--threads", "8", during=kill)
    answered = tally["answered"]
    print(f"{target}: {sum(answered.values())} calls {answered}, {len(tally['failed'])} failed, slowest call "
          f"{tally['slowest_s']} s, {tally['over_1s']} over 1 s; killed {name}")
    assert tally["failed"] == []
    assert name in answered  # it was serving this load when it died
    assert len(answered) == REPLICAS
    wait_healthy(victim)  # restarted by Docker, the same container
    assert inspect(victim)["RestartCount"] >= 1


@pytest.mark.docker
@pytest.mark.slow
def test_a_replica_killed_under_load_loses_no_call_and_restarts(stack):
    # Through HAProxy from this host: its retry-on/redispatch and health checks, and the client's retryPolicy.
    kill_one_replica_under_load(stack, load_command_here(), proxy_target(stack))
    # The direct route from a container: gRPC's round_robin and retryPolicy alone.
    kill_one_replica_under_load(stack, load_command_on_network(stack), "dns:///server:50051")


@pytest.mark.docker
@pytest.mark.slow
def test_the_plain_down_takes_the_proxy_down_too(stack):
    """The README's `docker compose down --remove-orphans`, without the scale files: the proxy, which the
    base file does not name, goes with the replicas (a plain `down` would leave it running, an orphan)."""
    assert stack.services_running() == ["proxy", "server", "server", "server"]
    plain = ComposeProject(stack.command, stack.name, stack.env)  # docker-compose.yml alone
    plain("down", "--remove-orphans", "--timeout", "20")
    left = run(["docker", "ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={stack.name}"])
    assert left.stdout.split() == []  # removed, not only stopped
