"""bench.loadgen's Open Inference Protocol twin: N concurrent callers through `tritonclient.grpc.aio`.

    python -m bench.oip_loadgen --plan plan.json --out results.json

Same plan and results as bench.loadgen (bench.loadgen.measure times them), for scenarios with
"mode": "v2": each of N callers loops on tritonclient's `infer` (ModelInfer), "per_call" sequences per
call (default 1) as one right-padded x [K, T_max, F], asking for the scenario's "outputs" by name.
Optional scenario keys: "lengths" (send lengths [K] INT64 beside x; default: only when K > 1) and
"pad_to" (pad x to this many steps, e.g. the data's longest, so that every request has one shape).
With the defaults one sequence travels as x [1, T, F] alone. The inputs are built before the clock
starts, cycling through the payloads, as bench.loadgen builds its Encode requests.
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
from seqserve.inference import pad


def build_inputs(sequences: list[np.ndarray], per_call: int = 1, lengths: bool | None = None,
                 pad_to: int | None = None) -> list[list[tc.InferInput]]:
    """One request's inputs per payload position: x (K, T_max, F) FP32 (+ lengths (K,) INT64), raw little-endian."""
    n, send_lengths = len(sequences), per_call > 1 if lengths is None else lengths
    requests = []
    for i in range(n):
        x, row_lengths = pad([sequences[(i * per_call + j) % n] for j in range(per_call)], sequences[0].shape[1])
        if pad_to is not None and pad_to > x.shape[1]:
            x = np.pad(x, ((0, 0), (0, pad_to - x.shape[1]), (0, 0)))  # (K, pad_to, F)
        tensor = tc.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        requests.append([tensor])
        if send_lengths:
            requests[-1].append(tc.InferInput("lengths", [len(row_lengths)], "INT64"))
            requests[-1][-1].set_data_from_numpy(row_lengths)
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
    if scenario["mode"] != "v2":
        raise ValueError(f"{scenario['label']}: this load generator runs mode v2")
    concurrency, model = int(scenario["concurrency"]), scenario["model"]
    requests = build_inputs(sequences, int(scenario.get("per_call", 1)), scenario.get("lengths"),
                            scenario.get("pad_to"))
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
