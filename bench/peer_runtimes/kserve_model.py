"""KServe peer: a `kserve.Model` running onnxruntime on a seqserve model.onnx, served by `ModelServer`.

    bench/.peers/kserve-venv/bin/python -m bench.peer_runtimes.kserve_model --model_name jv_bilstm_attn \
        --model_file model_repository/jv_bilstm_attn/1/model.onnx --threads 2 --grpc_port 8081 --http_port 8080

(PYTHONPATH = the repository root.) `predict` is synchronous, as KServe's own ONNX examples write it:
KServe has no request batching, each ModelInfer is one onnxruntime run. It binds every interface
(`[::]`, no option): bench.peers runs it in a network namespace holding only loopback.
"""

from __future__ import annotations

import argparse

from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server

from bench.peer_runtimes import encode
from seqserve.inference import open_session


class OnnxEncoder(Model):
    """x (B, T, F) FP32 and optional lengths (B,) INT64 in; logits and probabilities (B, C) FP32 out."""

    def __init__(self, name: str, model_file: str, threads: int) -> None:
        super().__init__(name)
        self.model_file, self.threads = model_file, threads
        self.session = None
        self.load()

    def load(self) -> bool:
        self.session = open_session(self.model_file, self.threads)
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        lengths = payload.get_input_by_name("lengths")
        answers = encode(self.session, payload.get_input_by_name("x").as_numpy(),
                         None if lengths is None else lengths.as_numpy())
        outputs = []
        for name, value in answers.items():
            output = InferOutput(name, list(value.shape), "FP32")
            output.set_data_from_numpy(value, binary_data=True)
            outputs.append(output)
        return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=outputs)


def main() -> None:
    parser = argparse.ArgumentParser(parents=[model_server.parser], description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_file", required=True, help="the model.onnx to serve")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    args, _ = parser.parse_known_args()
    model = OnnxEncoder(args.model_name, args.model_file, args.threads)
    ModelServer().start([model])


if __name__ == "__main__":
    main()
