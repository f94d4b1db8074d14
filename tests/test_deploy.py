"""deploy/: the Kubernetes manifests and KServe resources, checked without a cluster.

- yamllint on every YAML file of deploy/ and docker-compose.scale.yml;
- kubernetes-validate, strict (an unknown field is an error), against Kubernetes K8S_VERSION's schemas:
  each file of deploy/k8s on its own, and what each kustomization renders (`kubectl kustomize`;
  skipped without kubectl);
- the KServe resources against the models of the KServe Python SDK (KSERVE_VERSION): their field
  names, types and required fields, with the Kubernetes types inside them (containers, probes,
  resources, metadata) against the Kubernetes schemas. The SDK's wheel is read, not installed (it
  pins protobuf < 7, seqserve needs 7): .ci/run downloads it into .ci/tools/;
- what the manifests promise: grpc.health.v1 probes, non-root, read-only root, requests = limits, a
  grace period longer than the server's, the autoscaler, the disruption budget, both Services;
- with a Docker engine: the serving image, run as the Deployment runs it (read-only root filesystem,
  uid 10001, no capabilities, no privilege escalation, a tmpfs /tmp, 1 CPU), reports SERVING.

Not run here: a cluster, so no admission webhooks, no KServe controller, no scheduling, no probe or
autoscaler behaviour.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import shutil
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from servers import ROOT
from test_docker import TEST_IMAGE, docker_engine, image_id, run

from seqserve.server import healthcheck

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
import jsonschema  # noqa: E402  (kubernetes-validate's own dependencies)
from kubernetes_validate.utils import schema_contents  # noqa: E402
from referencing import Registry, Resource  # noqa: E402

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KSERVE = DEPLOY / "kserve"
K8S_VERSION = "1.33.0"  # the oldest Kubernetes the manifests promise to work on (native gRPC probes: 1.24+)
KSERVE_VERSION = "0.21.0"
KSERVE_WHEEL = Path(os.environ.get("SEQSERVE_KSERVE_WHEEL")
                    or ROOT / ".ci" / "tools" / f"kserve-{KSERVE_VERSION}-py3-none-any.whl")
SERVER_GRACE_S = 10  # SEQSERVE_GRACE_SECONDS in the manifests
CONTAINER_UID = 10001
YAMLLINT_CONFIG = ("{extends: default, rules: {line-length: {max: 120}, document-start: disable, "
                   "truthy: {check-keys: false}}}")
__all__ = ["docker_engine"]  # a fixture of test_docker.py, used here


def yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yaml"), ROOT / "docker-compose.scale.yml"])


def kustomizations() -> list[Path]:
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def documents(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def manifests(folder: Path) -> list[tuple[Path, dict]]:
    """Every Kubernetes object in the folder's YAML files (kustomization files are not objects)."""
    return [(path, doc) for path in sorted(folder.rglob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in documents(path.read_text())]


def kubectl() -> str:
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.skip("kubectl not installed: its `kubectl kustomize` renders the overlays")
    return binary


@functools.cache
def rendered(folder: Path) -> tuple[dict, ...]:
    return tuple(documents(run([kubectl(), "kustomize", str(folder)]).stdout))


def by_kind(objects: tuple[dict, ...] | list[dict], kind: str, name: str | None = None) -> dict:
    [found] = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    return found


# --- yamllint ----------------------------------------------------------------------------------------------

def test_yaml_passes_yamllint():
    pytest.importorskip("yamllint", reason="pip install yamllint")
    from yamllint import config, linter

    rules = config.YamlLintConfig(YAMLLINT_CONFIG)
    problems = [f"{path.relative_to(ROOT)}:{p.line}:{p.column}: {p.desc} ({p.rule})"
                for path in yaml_files() for p in linter.run(path.read_text(), rules, str(path))]
    assert problems == [], "\n".join(problems)


# --- Kubernetes schemas ------------------------------------------------------------------------------------

def k8s_errors(obj: dict) -> list[str]:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{obj['kind']}/{obj['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}"]
    return []


@pytest.mark.parametrize("path", sorted(K8S.rglob("*.yaml")), ids=lambda p: str(p.relative_to(K8S)))
def test_each_manifest_is_valid_kubernetes(path):
    if path.name == "kustomization.yaml":
        assert documents(path.read_text())[0]["kind"] == "Kustomization"
        return
    errors = [e for doc in documents(path.read_text()) for e in k8s_errors(doc)]
    assert errors == [], "\n".join(errors)


@pytest.mark.parametrize("folder", kustomizations(), ids=lambda p: str(p.relative_to(K8S)))
def test_each_kustomization_renders_valid_kubernetes(folder):
    objects = rendered(folder)
    assert {o["kind"] for o in objects} >= {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    errors = [e for obj in objects for e in k8s_errors(obj)]
    assert errors == [], "\n".join(errors)


# --- what the manifests promise ----------------------------------------------------------------------------

def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_deployment_probes_health_runs_unprivileged_and_outlives_the_grace_period():
    objects = [doc for _, doc in manifests(K8S / "base")]
    pod = by_kind(objects, "Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == 50051, probe  # native grpc.health.v1 probes
    assert container["readinessProbe"]["grpc"]["service"] == "seqserve.v1.SeqserveService"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == CONTAINER_UID
    resources = container["resources"]
    assert resources["requests"] == resources["limits"]  # Guaranteed QoS; threads follow the CPU limit
    env = env_of(container)
    assert env["SEQSERVE_INTRA_OP_THREADS"] == "0" and int(env["SEQSERVE_GRACE_SECONDS"]) == SERVER_GRACE_S
    assert int(env["SEQSERVE_DRAIN_SECONDS"]) <= SERVER_GRACE_S
    assert pod["terminationGracePeriodSeconds"] > SERVER_GRACE_S + 1  # the server exits before SIGKILL
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}  # the only writable path


def test_services_autoscaler_and_disruption_budget_fit_the_deployment():
    objects = [doc for _, doc in manifests(K8S / "base")]
    deployment = by_kind(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    cluster_ip, headless = by_kind(objects, "Service", "seqserve"), by_kind(objects, "Service", "seqserve-headless")
    assert headless["spec"]["clusterIP"] == "None" and not headless["spec"]["publishNotReadyAddresses"]
    for service in (cluster_ip, headless):
        assert service["spec"]["selector"] == labels
        [grpc_port] = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
        assert (grpc_port["port"], grpc_port["appProtocol"]) == (50051, "kubernetes.io/h2c")
    hpa = by_kind(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    pdb = by_kind(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == labels and pdb["spec"]["maxUnavailable"] == 1


def test_the_production_overlay_changes_replicas_resources_and_image():
    base = by_kind(rendered(K8S / "base"), "Deployment")
    production = rendered(K8S / "overlays" / "production")
    deployment = by_kind(production, "Deployment")
    assert deployment["spec"]["replicas"] == 4 != base["spec"]["replicas"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/seqserve:0.1.0"
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "1Gi"}
    assert by_kind(production, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == 4
    assert {o["metadata"].get("namespace") for o in production} == {"seqserve"}


# --- KServe: against the SDK's models -----------------------------------------------------------------------

@dataclass(frozen=True)
class Model:
    """One OpenAPI model of the KServe SDK: attribute -> (JSON key, type), and the required attributes."""

    fields: dict[str, tuple[str, str]]
    required: frozenset[str]

    @property
    def keys(self) -> dict[str, str]:
        """JSON key -> type."""
        return {key: kind for key, kind in self.fields.values()}


def _dict_literal(node: ast.ClassDef, name: str) -> dict[str, str]:
    [value] = [s.value for s in node.body if isinstance(s, ast.Assign) and s.targets[0].id == name]
    return ast.literal_eval(value)


def _required(node: ast.ClassDef, attributes: set[str]) -> frozenset[str]:
    """The attributes __init__ sets unconditionally (the generator guards optional ones with `if x is not None`)."""
    [init] = [f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"]
    return frozenset(t.attr for s in init.body if isinstance(s, ast.Assign) for t in s.targets
                     if isinstance(t, ast.Attribute) and t.attr in attributes)


@functools.cache
def kserve_models() -> dict[str, Model]:
    """Class name -> Model, read from the SDK wheel's kserve/models/*.py (parsed, never imported)."""
    if not KSERVE_WHEEL.is_file():
        pytest.skip(f"no KServe SDK wheel at {KSERVE_WHEEL}: pip download --no-deps --dest .ci/tools "
                    f"kserve=={KSERVE_VERSION} (or set SEQSERVE_KSERVE_WHEEL)")
    models = {}
    with zipfile.ZipFile(KSERVE_WHEEL) as wheel:
        for name in wheel.namelist():
            if not re.fullmatch(r"kserve/models/\w+\.py", name):
                continue
            for node in ast.parse(wheel.read(name)).body:
                if isinstance(node, ast.ClassDef) and any(s for s in node.body if isinstance(s, ast.Assign)):
                    types, keys = _dict_literal(node, "openapi_types"), _dict_literal(node, "attribute_map")
                    models[node.name] = Model({a: (keys[a], t) for a, t in types.items()}, _required(node, set(types)))
    return models


@functools.cache
def k8s_validator(type_name: str) -> jsonschema.protocols.Validator:
    """A strict Kubernetes schema for an SDK type named like V1Container or V1ObjectMeta."""
    folder = f"kubernetes-json-schema/v{K8S_VERSION}-local-strict"
    stem = type_name.removeprefix("V1").lower()
    for candidate in (f"{stem}-v1", f"{stem}-meta-v1"):
        try:
            schema = schema_contents(f"{folder}/{candidate}.json", K8S_VERSION)
        except FileNotFoundError:
            continue
        definitions = Resource.from_contents(schema_contents(f"{folder}/_definitions.json", K8S_VERSION))
        registry = definitions @ (Resource.from_contents(schema) @ Registry())
        return jsonschema.validators.Draft202012Validator(schema, registry=registry)
    raise AssertionError(f"no Kubernetes schema for {type_name}")


def kserve_errors(value: object, kind: str, where: str) -> Iterator[str]:
    """What in `value` does not fit the SDK type `kind` ("list[V1Container]", "dict(str, str)", a model...)."""
    scalars = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
    if kind in scalars:
        if not isinstance(value, scalars[kind]) or (kind == "int" and isinstance(value, bool)):
            yield f"{where}: {value!r} is not {kind}"
    elif match := re.fullmatch(r"list\[(.+)\]", kind):
        if not isinstance(value, list):
            yield f"{where}: not a list"
            return
        for i, item in enumerate(value):
            yield from kserve_errors(item, match.group(1), f"{where}[{i}]")
    elif match := re.fullmatch(r"dict\(str, (.+)\)", kind):
        if not isinstance(value, dict):
            yield f"{where}: not a mapping"
            return
        for key, item in value.items():
            yield from kserve_errors(item, match.group(1), f"{where}.{key}")
    elif kind in kserve_models():
        yield from model_errors(value, kserve_models()[kind], where)
    elif kind.startswith("V1"):
        for error in k8s_validator(kind).iter_errors(value):
            yield f"{where}.{'.'.join(map(str, error.path))}: {error.message}"
    else:
        yield f"{where}: no schema for type {kind}"


def model_errors(value: object, model: Model, where: str) -> Iterator[str]:
    if not isinstance(value, dict):
        yield f"{where}: not a mapping"
        return
    for key in sorted(set(value) - set(model.keys)):
        yield f"{where}.{key}: no such field"
    for attribute in sorted(model.required):
        key = model.fields[attribute][0]
        if key not in value:
            yield f"{where}.{key}: required"
    for key, item in value.items():
        if key in model.keys:
            yield from kserve_errors(item, model.keys[key], f"{where}.{key}")


KSERVE_KINDS = {("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
                ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService"}


@pytest.mark.parametrize("path", sorted(KSERVE.glob("*.yaml")), ids=lambda p: p.name)
def test_kserve_resources_fit_the_sdk_models(path):
    [resource] = documents(path.read_text())
    kind = KSERVE_KINDS[(resource["apiVersion"], resource["kind"])]
    errors = list(kserve_errors(resource, kind, resource["kind"]))
    assert errors == [], "\n".join(errors)


def test_the_schema_check_catches_what_it_should():
    runtime = documents((KSERVE / "servingruntime.yaml").read_text())[0]
    spec = runtime["spec"]
    broken = {**runtime, "spec": {**spec, "protocolVersion": ["v2"],  # misspelt: protocolVersions
                                  "containers": [{**spec["containers"][0], "ports": [{"containerPort": "50051"}]}],
                                  "supportedModelFormats": [{"name": "seqserve", "version": 1}]}}
    assert sorted(kserve_errors(broken, "V1alpha1ServingRuntime", "ServingRuntime")) == [
        "ServingRuntime.spec.containers[0].ports.0.containerPort: '50051' is not of type 'integer'",
        "ServingRuntime.spec.protocolVersion: no such field",
        "ServingRuntime.spec.supportedModelFormats[0].version: 1 is not str",
    ]
    isvc = documents((KSERVE / "inferenceservice.yaml").read_text())[0]
    no_format = {**isvc, "spec": {"predictor": {"model": {"runtime": "seqserve"}}}}
    assert list(kserve_errors(no_format, "V1beta1InferenceService", "InferenceService")) == [
        "InferenceService.spec.predictor.model.modelFormat: required"]


def test_kserve_runtime_serves_v2_grpc_from_the_mounted_models():
    runtime = documents((KSERVE / "servingruntime.yaml").read_text())[0]["spec"]
    isvc = documents((KSERVE / "inferenceservice.yaml").read_text())[0]["spec"]["predictor"]
    [container] = runtime["containers"]
    assert {"v2", "grpc-v2"} <= set(runtime["protocolVersions"])
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [("h2c", 50051)]
    env = env_of(container)
    assert env["SEQSERVE_MODEL_REPOSITORY"] == "/mnt/models" and env["SEQSERVE_PORT"] == "50051"
    assert container["readinessProbe"]["grpc"]["service"] == "inference.GRPCInferenceService"
    assert "command" not in container and "args" not in container  # the image's entrypoint: python -m server
    model = isvc["model"]
    assert model["runtime"] == documents((KSERVE / "servingruntime.yaml").read_text())[0]["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["protocolVersions"]


# --- the image, run as the Deployment runs it ----------------------------------------------------------------

@pytest.mark.docker
@pytest.mark.slow
def test_image_serves_with_a_read_only_root_and_no_privileges(docker_engine):
    image = f"{TEST_IMAGE}:latest"
    if image_id(image) is None:
        run(["docker", "build", "--target", "serve", "-t", image, "."], timeout=900)
    name = f"seqserve-deploy-{uuid.uuid4().hex[:8]}"
    run(["docker", "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp:size=64m",
         "--user", f"{CONTAINER_UID}:{CONTAINER_UID}", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
         "--cpus", "1", "-p", "127.0.0.1::50051", image])
    try:
        port = run(["docker", "port", name, "50051/tcp"]).stdout.split()[0].rsplit(":", 1)[1]
        deadline = time.monotonic() + 60
        while healthcheck.main(["--port", port, "--timeout", "2"]) != 0:
            assert time.monotonic() < deadline, run(["docker", "logs", name], check=False).stderr
            assert run(["docker", "inspect", "--format", "{{.State.Running}}", name]).stdout.strip() == "true", \
                run(["docker", "logs", name], check=False).stdout
            time.sleep(1)
    finally:
        run(["docker", "rm", "-f", name], check=False)
