"""Server reflection as outside tools use it: every service listed can be described (grpcurl `describe`),
and Buf (`buf curl`, installed by .ci/run from npm) lists every method and calls one, over both reflection
protocols, against a real server on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from servers import ROOT, ThreadedServer, threaded_server

from seqserve.oip import grpc_service_pb2
from seqserve.v1 import seqserve_pb2

BUF = ROOT / ".ci" / "tools" / "node_modules" / ".bin" / "buf"
REFLECTION_PATHS = {"grpc-v1": "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                    "grpc-v1alpha": "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"}
SERVED_FILES: tuple[FileDescriptor, ...] = (seqserve_pb2.DESCRIPTOR, grpc_service_pb2.DESCRIPTOR,
                                            health_pb2.DESCRIPTOR)


def served_methods() -> set[str]:
    """`service/Method` of every method the server serves, reflection's two services included."""
    methods = {f"{service.full_name}/{method.name}" for file in SERVED_FILES
               for service in file.services_by_name.values() for method in service.methods}
    return methods | {path.lstrip("/") for path in REFLECTION_PATHS.values()}


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with threaded_server(warmup=False) as s:
        yield s


def reflect(channel: grpc.Channel, protocol: str, request: reflection_pb2.ServerReflectionRequest,
            ) -> reflection_pb2.ServerReflectionResponse:
    """One request over one reflection protocol (v1 has v1alpha's messages under another package)."""
    call = channel.stream_stream(REFLECTION_PATHS[protocol],
                                 request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                 response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    [answer] = list(call(iter([request]), timeout=10))
    return answer


@pytest.mark.parametrize("protocol", list(REFLECTION_PATHS))
def test_every_listed_service_is_described(server, protocol):
    with grpc.insecure_channel(server.target) as channel:
        listed = reflect(channel, protocol, reflection_pb2.ServerReflectionRequest(list_services=""))
        names = {s.name for s in listed.list_services_response.service}
        assert names == {method.split("/")[0] for method in served_methods()}
        for name in names:
            answer = reflect(channel, protocol, reflection_pb2.ServerReflectionRequest(file_containing_symbol=name))
            assert answer.WhichOneof("message_response") == "file_descriptor_response", (name, answer)
            assert answer.file_descriptor_response.file_descriptor_proto, name


def buf_curl(*args: str) -> subprocess.CompletedProcess[str]:
    if not BUF.exists():
        pytest.skip(f"Buf is not installed at {BUF} (npm install --prefix .ci/tools @bufbuild/buf@1.75.0)")
    return subprocess.run([str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("protocol", list(REFLECTION_PATHS))
def test_buf_lists_every_method(server, protocol):
    done = buf_curl("--reflect-protocol", protocol, "--list-methods", f"http://{server.target}")
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == served_methods()


@pytest.mark.parametrize("protocol", list(REFLECTION_PATHS))
def test_buf_calls_a_v1_method_it_learnt_by_reflection(server, protocol):
    done = buf_curl("--reflect-protocol", protocol, "--data", json.dumps({"model": "jv_bigru_attn"}),
                    f"http://{server.target}/seqserve.v1.SeqserveService/GetModel")
    assert done.returncode == 0, done.stderr
    model = json.loads(done.stdout)["model"]
    assert (model["name"], model["version"], model["cell"]) == ("jv_bigru_attn", "1", "gru")
