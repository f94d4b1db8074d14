"""Batch inference: files of sequences in, predictions out (`batch_infer.py` is the CLI).

    records   a record, a bad one, and many records as columns (what readers yield and the job predicts)
    readers   one reader per input format (JSON Lines, Parquet, .npz, UEA .ts, long-form CSV)
    writers   JSON Lines / Parquet writers that commit whole records per flush, and resume support
    backends  where the model runs: in-process onnxruntime (local) or the gRPC service (remote)
    pipeline  chunked reading, length bucketing, errors file, resume, summary
    ray_job   the same job as a Ray Data pipeline (optional `ray` extra)

Nothing here imports torch; pyarrow (Parquet) and tqdm (progress bar) are imported only when used.
"""
