"""MLServer peer: a custom runtime running onnxruntime on a seqserve model.onnx.

    bench/.peers/mlserver-venv/bin/mlserver start <folder with settings.json and <model>/model-settings.json>

(PYTHONPATH = the repository root.) Templates for both settings files are in bench/peer_runtimes/mlserver/;
bench.peers fills in the ports and the model file. Adaptive batching is on (max_batch_size 64,
max_batch_time 1 ms): MLServer joins queued requests input by input along axis 0 before `predict`
and splits the answer back by rows. `parallel_workers` 0: `predict` runs in the server process (as
KServe's and seqserve's runs do), faster here than one worker process behind a queue.
"""

from __future__ import annotations

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from bench.peer_runtimes import encode
from seqserve.inference import open_session


class OnnxEncoder(MLModel):
    """x (B, T, F) FP32 and optional lengths (B,) INT64 in; logits and probabilities (B, C) FP32 out."""

    async def load(self) -> bool:
        extra = self.settings.parameters.extra or {}
        self._session = open_session(self.settings.parameters.uri, int(extra.get("threads", 2)))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        named = {tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}
        answers = encode(self._session, named["x"], named.get("lengths"))
        return InferenceResponse(model_name=self.name, model_version=self.version, id=payload.id,
                                 outputs=[NumpyCodec.encode_output(name, value) for name, value in answers.items()])
