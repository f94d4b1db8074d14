"""TLS, mutual TLS and bearer-token auth on a real server port, and the switches around them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from reference import reference_labels
from rpc import raises_status
from servers import REPOSITORY, ROOT, threaded_server

from seqserve.channel import Security
from seqserve.client import SeqserveClient

TOKEN = "s3cret-token"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def issue(cwd: Path, name: str, ca: str, extensions: str) -> None:
    """A P-256 key and a certificate for it, signed by `ca`."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
            f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=cwd)
    (cwd / f"{name}.ext").write_text(extensions)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=cwd)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("TLS tests make their certificates with the openssl command, which is not installed")
    folder = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
            "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=seqserve test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign", cwd=folder)
    issue(folder, "server", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    issue(folder, "client", "ca", "extendedKeyUsage=clientAuth\n")
    (folder / "token").write_text(TOKEN + "\n")
    return folder


def encode_one(client: SeqserveClient) -> None:
    """Encode one sequence; its label must be the reference's."""
    zeros = np.zeros((5, 12), np.float32)
    assert client.encode("jv_bigru_attn", [zeros])[0].label == reference_labels("jv_bigru_attn", [zeros])[0]


def test_tls_serves_verified_clients_only(pki):
    with threaded_server(REPOSITORY, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key")) as s:
        with SeqserveClient(s.target, timeout=5, security=Security(ca=pki / "ca.pem")) as client:
            encode_one(client)
        with SeqserveClient(s.target, timeout=5) as plaintext:
            with raises_status(grpc.StatusCode.UNAVAILABLE):
                encode_one(plaintext)


def test_mutual_tls_requires_a_client_certificate(pki):
    with threaded_server(REPOSITORY, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"),
                         tls_client_ca=str(pki / "ca.pem")) as s:
        mutual = Security(ca=pki / "ca.pem", cert=pki / "client.pem", key=pki / "client.key")
        with SeqserveClient(s.target, timeout=5, security=mutual) as client:
            encode_one(client)
        with SeqserveClient(s.target, timeout=5, security=Security(ca=pki / "ca.pem")) as anonymous:
            with raises_status(grpc.StatusCode.UNAVAILABLE):
                encode_one(anonymous)


def test_bearer_token_guards_every_rpc_but_health(pki):
    with threaded_server(REPOSITORY, auth_token_file=str(pki / "token")) as s:
        with SeqserveClient(s.target, timeout=5, security=Security(token=TOKEN)) as client:
            encode_one(client)
            assert client.list_models()
        for token in (None, "wrong", TOKEN + "x"):
            with SeqserveClient(s.target, timeout=5, security=Security(token=token)) as other:
                with raises_status(grpc.StatusCode.UNAUTHENTICATED):
                    encode_one(other)
                with raises_status(grpc.StatusCode.UNAUTHENTICATED):
                    other.list_models()
                stream = other.stream_sequence("jv_lstm_stream", [np.zeros((3, 12), np.float32)])
                with raises_status(grpc.StatusCode.UNAUTHENTICATED):
                    list(stream)
                health = health_pb2_grpc.HealthStub(other.channel)
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_cli_passes_tls_and_token_files(pki):
    with threaded_server(REPOSITORY, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"),
                         auth_token_file=str(pki / "token")) as s:
        out = subprocess.run([sys.executable, "-m", "seqserve.cli", "--server", f"localhost:{s.server.port}",
                              "--tls-ca", str(pki / "ca.pem"), "--token-file", str(pki / "token"), "list"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "jv_bilstm_attn" in out.stdout


def test_reflection_can_be_turned_off():
    with threaded_server(REPOSITORY, reflection=False) as s, SeqserveClient(s.target, timeout=5) as client:
        stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
        ask = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        with raises_status(grpc.StatusCode.UNIMPLEMENTED):
            list(stub.ServerReflectionInfo(ask, timeout=5))


def test_health_probe_speaks_tls(pki):
    from seqserve.server import healthcheck

    with threaded_server(REPOSITORY, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"),
                         auth_token_file=str(pki / "token")) as s:
        port = str(s.server.port)
        assert healthcheck.main(["--port", port, "--tls-ca", str(pki / "ca.pem")]) == 0
        # A name the certificate does not carry fails verification; the override names the one it does.
        assert healthcheck.main(["--host", "127.0.0.1", "--port", port, "--tls-ca", str(pki / "ca.pem"),
                                 "--tls-server-name", "wrong.example", "--timeout", "2"]) == 1
        assert healthcheck.main(["--port", port, "--tls-ca", str(pki / "ca.pem"), "--tls-server-name",
                                 "localhost"]) == 0
        assert healthcheck.main(["--port", port, "--timeout", "2"]) == 1  # plaintext to a TLS port
