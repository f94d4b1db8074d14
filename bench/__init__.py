"""Benchmarks: every figure a ratio against its ceiling, measured side by side in one run.

    python -m bench [--quick | --smoke] [--out-dir bench/]

The machines this runs on are shared and noisy, so no figure is an absolute time: each is a
ratio of two things measured alternately, in the same run, on the same cores (see RESULTS.md).

    runtime      onnxruntime vs PyTorch eager, same model, same threads
    efficiency   FLOP rate of the recurrent layers in onnxruntime vs a float32 GEMM
    serving      the gRPC server (own process) vs its ceiling 1/(1/ort_best + 1/echo),
                 driven by a load generator in a third process
    batch_script batch_infer.py's local backend vs in-process onnxruntime (bench/batch_bench.py)
    int8         dynamically quantized model vs fp32: speed-up and accuracy drop
"""

import os as _os

from seqserve.server.config import physical_cores as _physical_cores

# BLAS/OpenMP pools sized to the physical cores, like onnxruntime in the server; set before
# numpy or torch start their pools (an explicit environment setting wins).
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_name, str(_physical_cores()))
