"""bench.loadgen's Open Inference Protocol twin: N concurrent callers through `tritonclient.grpc.aio`.

    python -m bench.oip_loadgen --plan plan.json --out results.json

Same plan and results as bench.loadgen (bench.loadgen.measure times them), for scenarios with
"mode": "v2": each of N callers loops on tritonclient's `infer` (ModelInfer), one sequence per call
(x [1, T, F], no lengths), asking for the scenario's "outputs" by name. The inputs are built before
the clock starts, cycling through the payloads, as bench.loadgen builds its Encode requests.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
import tritonclient.grpc as tc
import tritonclient.grpc.aio as tca
from tritonclient.utils import InferenceServerException

from bench import loadgen
from bench.loadgen import Window, measure


def build_inputs(sequences: list[np.ndarray]) -> list[list[tc.InferInput]]:
    """One request's inputs per sequence: x (1, T, F) FP32, raw little-endian."""
    requests = []
    for steps in sequences:
        x = tc.InferInput("x", [1, *steps.shape], "FP32")
        x.set_data_from_numpy(np.ascontiguousarray(steps[None], dtype=np.float32))  # (1, T, F)
        requests.append([x])
    return requests


async def v2_caller(client: tca.InferenceServerClient, model: str, requests: list[list[tc.InferInput]],
                    outputs: list[tc.InferRequestedOutput], first: int, step: int, window: Window) -> None:
    i = first
    while (t0 := time.perf_counter()) < window.end:
        inputs = requests[i % len(requests)]
        i += step
        try:
            result = await client.infer(model, inputs, outputs=outputs)
        except InferenceServerException as exc:
            window.error(f"{exc.status()}: {exc.message()}")
            continue
        if len(result.get_response().outputs) != len(outputs):
            window.error(f"{len(result.get_response().outputs)} outputs for {len(outputs)} asked for")
        window.record(t0, time.perf_counter())


async def run_scenario(scenario: dict[str, Any], sequences: list[np.ndarray]) -> dict[str, Any]:
    if scenario["mode"] != "v2" or int(scenario.get("per_call", 1)) != 1:
        raise ValueError(f"{scenario['label']}: this load generator runs mode v2, one sequence per call")
    concurrency, model = int(scenario["concurrency"]), scenario["model"]
    requests = build_inputs(sequences)
    outputs = [tc.InferRequestedOutput(name) for name in scenario["outputs"]]
    client = tca.InferenceServerClient(scenario["target"])
    try:
        if not await client.is_model_ready(model):
            raise RuntimeError(f"{scenario['target']}: model {model} is not ready")
        return await measure(scenario, lambda window: [
            v2_caller(client, model, requests, outputs, w, concurrency, window) for w in range(concurrency)])
    finally:
        await client.close()


if __name__ == "__main__":
    sys.exit(loadgen.main(run=run_scenario, prog="python -m bench.oip_loadgen", description=__doc__.split("\n\n")[0]))
