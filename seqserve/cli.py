"""Command-line client for a seqserve server (`seqserve`, or `python -m seqserve.cli`).

    seqserve list
    seqserve info jv_bilstm_attn
    seqserve encode jv_bilstm_attn samples/japanese_vowels_sample.jsonl --limit 5
    seqserve encode jv_bilstm_attn samples/japanese_vowels_sample.jsonl --limit 1 --plot plots/encode.png
    seqserve stream jv_lstm_stream samples/japanese_vowels_sample.jsonl --index 3 --chunk 4

Input files: JSON Lines, Parquet (the `batch` extra), .npz or UEA .ts (see samples/README.md).
--plot needs matplotlib (the `plot` extra); it says where it wrote the picture.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np

from seqserve.batch.readers import Record, each_record, read_records
from seqserve.channel import add_security_args, security_from_args
from seqserve.client import OUTPUTS, SeqserveClient
from seqserve.numerics import softmax
from seqserve.plots import PlotUnavailable, plot_encoding, plot_stream
from seqserve.v1 import seqserve_pb2 as pb


def good_records(path: str, limit: int | None) -> Iterator[Record]:
    records = (r for r in each_record(read_records(path)) if isinstance(r, Record))
    return itertools.islice(records, limit)


def parity_column(m: pb.ModelInfo) -> str:
    """The parity check's max abs error; an int8 model has none (it is judged on test accuracy): its precision."""
    return f"{m.parity.max_abs_error:.1e}" if m.HasField("parity") else m.precision or "-"


def say_plotted(path: Path) -> None:
    print(f"plot written to {path.resolve()}", file=sys.stderr)


def cmd_list(client: SeqserveClient, args: argparse.Namespace) -> None:
    models = client.list_models()  # before the header: an unreachable server prints only its error
    print(f"{'model':<23} {'ver':>3} {'cell':<5} {'dirs':>4} {'layers':>6} {'hidden':>6} {'attention':<9} "
          f"{'streaming':<9} {'test acc':>8} {'parity err':>10}")
    for m in models:
        print(f"{m.name:<23} {m.version:>3} {m.cell:<5} {2 if m.bidirectional else 1:>4} {m.layers:>6} "
              f"{m.hidden_size:>6} {m.attention:<9} {str(m.streaming).lower():<9} {m.test_accuracy:>8.4f} "
              f"{parity_column(m):>10}")


def architecture_line(m: pb.ModelInfo) -> str:
    """"2-layer bidirectional LSTM, hidden 64, additive attention"."""
    directions = "bidirectional " if m.bidirectional else ""
    attention = f", {m.attention} attention" if m.attention and m.attention != "none" else ""
    return f"{m.layers}-layer {directions}{m.cell.upper()}, hidden {m.hidden_size}{attention}"


def tensor_line(t: pb.TensorInfo) -> str:
    """"x float32 [batch, time, 12]  raw features, right-padded"."""
    note = f"  {t.description}" if t.description else ""
    return f"{t.name} {t.dtype} [{', '.join(t.shape)}]{note}"


def parity_line(m: pb.ModelInfo) -> str:
    if not m.HasField("parity"):
        return "none (judged on test accuracy)"
    p = m.parity
    verdict = "passed" if p.passed else "FAILED"
    return f"{verdict}: max abs error {p.max_abs_error:.1e} over {p.cases} cases (atol {p.atol:g}, rtol {p.rtol:g})"


DESCRIBED = {"name", "version", "versions", "description", "cell", "bidirectional", "layers", "hidden_size",
             "attention", "input_features", "streaming", "class_labels", "inputs", "outputs", "parity",
             "test_accuracy", "precision"}


def describe_model(m: pb.ModelInfo) -> str:
    """A model's description as aligned `label  value` lines, for people (not protobuf text)."""
    rows: list[tuple[str, str]] = [
        ("model", f"{m.name} version {m.version} (served: {', '.join(map(str, m.versions))})"),
        ("description", m.description),
        ("architecture", architecture_line(m)),
        ("streaming", "yes: chunks are answered as they arrive" if m.streaming else "no"),
        ("features", str(m.input_features)),
        ("classes", " ".join(m.class_labels)),
        ("precision", m.precision),
        ("test accuracy", f"{m.test_accuracy:.4f}" if m.class_labels else ""),
        ("parity", parity_line(m)),
    ]
    rows += [("inputs" if i == 0 else "", tensor_line(t)) for i, t in enumerate(m.inputs)]
    rows += [("outputs" if i == 0 else "", tensor_line(t)) for i, t in enumerate(m.outputs)]
    # Fields added to ModelInfo after this layout was written still show, as protobuf names them.
    rows += [(field.name.replace("_", " "), str(value)) for field, value in m.ListFields()
             if field.name not in DESCRIBED]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}".rstrip() for label, value in rows if value or not label)


def cmd_info(client: SeqserveClient, args: argparse.Namespace) -> None:
    print(describe_model(client.get_model(args.model, args.version)))


def cmd_encode(client: SeqserveClient, args: argparse.Namespace) -> None:
    records = list(good_records(args.file, args.limit))
    outputs = args.outputs
    if args.plot and outputs is not None and "attention" not in outputs:
        outputs = [*outputs, "attention"]
    results = client.encode(args.model, [r.steps for r in records], ids=[r.id for r in records],
                            outputs=outputs, version=args.version)
    width = max([4, *(len(result.label) for result in results)])  # class names line up, "1" or "Badminton"
    for record, result in zip(records, results, strict=True):
        truth = f"  (true {record.label})" if record.label is not None else ""
        confidence = result.probabilities.max()
        print(f"{result.id:>6}  T={len(record.steps):<4} -> {result.label:<{width}} p={confidence:.3f}{truth}")
        for name in ("h_n", "c_n", "context", "attention", "outputs", "step_logits", "logits"):
            value = getattr(result, name)
            if value is not None and args.show_tensors:
                print(f"        {name} {list(value.shape)}: {np.array2string(value.ravel()[:6], precision=3)} ...")
    if args.plot:
        record, result = records[0], results[0]
        labels = list(client.get_model(args.model, args.version).class_labels)
        truth = f", true {record.label}" if record.label is not None else ""
        plot_encoding(args.plot, record.steps, result.probabilities, labels, result.attention,
                      f"{args.model}: {record.id} ({len(record.steps)} steps) -> {result.label}{truth}")
        say_plotted(args.plot)


def cmd_stream(client: SeqserveClient, args: argparse.Namespace) -> None:
    record = next(itertools.islice(good_records(args.file, None), args.index, None))
    chunks = [record.steps[i : i + args.chunk] for i in range(0, len(record.steps), args.chunk)]
    truth = f", true label {record.label}" if record.label is not None else ""
    print(f"streaming sequence {record.id} ({len(record.steps)} steps) in chunks of {args.chunk}{truth}")
    outputs = ["hidden", "logits", "step_logits"] if args.plot else None
    updates = []
    for update in client.stream_sequence(args.model, chunks, version=args.version, outputs=outputs):
        bar = "#" * int(round(20 * update.result.probabilities.max()))
        print(f"  after {update.steps_seen:>4} steps: {update.result.label:<4} "
              f"p={update.result.probabilities.max():.3f} {bar}{'  (final)' if update.final else ''}")
        updates.append(update)
    if args.plot:
        labels = list(client.get_model(args.model, args.version).class_labels)
        step_logits = np.concatenate([u.result.step_logits for u in updates])  # (T, C)
        plot_stream(args.plot, record.steps, softmax(step_logits), labels, [u.steps_seen for u in updates],
                    f"{args.model}: {record.id} streamed in chunks of {args.chunk}{truth}")
        say_plotted(args.plot)


def add_model_args(parser: argparse.ArgumentParser, with_file: bool = True) -> argparse.ArgumentParser:
    parser.add_argument("model", help="model name")
    if with_file:
        parser.add_argument("file", help="JSON Lines, Parquet, .npz or .ts file")
    parser.add_argument("--version", type=int, default=0, help="version (0 = latest)")
    return parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seqserve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default=os.environ.get("SEQSERVE_SERVER", "localhost:50051"),
                   help="the server: host:port or any gRPC target, e.g. dns:///seqserve:50051 to balance over every "
                        "address the name resolves to [env SEQSERVE_SERVER]")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    add_security_args(p)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the models served").set_defaults(run=cmd_list)
    info = add_model_args(sub.add_parser("info", help="describe one model"), with_file=False)
    info.set_defaults(run=cmd_info)
    encode = add_model_args(sub.add_parser("encode", help="encode the sequences of a file in one call"))
    encode.add_argument("--limit", type=int, default=10, help="most sequences to send")
    encode.add_argument("--outputs", nargs="+", choices=sorted(OUTPUTS), help="tensors to return")
    encode.add_argument("--show-tensors", action="store_true", help="print the first values of each tensor")
    encode.add_argument("--plot", type=Path, metavar="PNG",
                        help="draw the first sequence: features, attention, class probabilities")
    encode.set_defaults(run=cmd_encode)
    stream = add_model_args(
        sub.add_parser("stream", help="stream one sequence chunk by chunk, printing the running prediction"))
    stream.add_argument("--index", type=int, default=0, help="which sequence of the file")
    stream.add_argument("--chunk", type=int, default=4, help="steps per chunk")
    stream.add_argument("--plot", type=Path, metavar="PNG",
                        help="draw the features and the running prediction after every step (streaming models)")
    stream.set_defaults(run=cmd_stream)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with SeqserveClient(args.server, timeout=args.timeout, security=security_from_args(args)) as client:
            args.run(client, args)
    except grpc.RpcError as exc:
        hint = ""
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            hint = f" (is a server running at {args.server}? set --server or SEQSERVE_SERVER)"
        print(f"error: {exc.code().name}: {exc.details()}{hint}", file=sys.stderr)
        return 1
    except PlotUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`... | head`): say nothing more, and keep Python's exit-time flush quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
