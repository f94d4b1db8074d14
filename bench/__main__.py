"""`python -m bench [--quick | --smoke] [--out-dir DIR]`: run every benchmark, write the results.

Writes DIR/results.json (named figures, each with value, goal, met, unit and details),
DIR/RESULTS.md (tables) and PNG plots. --quick takes under 2 minutes, --smoke (CI) less;
the default full mode takes longer and is what the committed results come from.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

from bench import batchscript, efficiency, int8, plots, report, runtime, serving
from bench.common import MODES, ROOT, kept_sections, machine_info, model_names, write_json

SECTIONS = ("runtime", "efficiency", "int8", "batch_script", "serving")


def command_for(mode: str, out_dir: Path) -> str:
    command = "python -m bench" + {"full": "", "quick": " --quick", "smoke": " --smoke"}[mode]
    if out_dir.resolve() != (ROOT / "bench").resolve():
        command += f" --out-dir {shlex.quote(str(out_dir))}"
    return command


def write_results(path: Path, text: str) -> None:
    """RESULTS.md anew, keeping the sections bench.oip and bench.peers wrote at its end."""
    kept = kept_sections(path)
    path.write_text(text.rstrip("\n") + ("\n\n" + kept if kept else "") + "\n")


def rerender(out_dir: Path) -> int:
    results = json.loads((out_dir / "results.json").read_text())
    raw = results.get("raw", {})
    results["plots"] = [p.name for p in plots.write_all(results["figures"], raw, out_dir)]
    write_results(out_dir / "RESULTS.md", report.render(results, raw, command_for(results["mode"], out_dir),
                                                        results["plots"]))
    print(f"bench: re-rendered {out_dir / 'RESULTS.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="shorter measurements, reduced runtime grid (< 2 min)")
    speed.add_argument("--smoke", action="store_true", help="the shortest run that still writes every figure (CI)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench",
                        help="where results.json, RESULTS.md and the PNGs go (default: bench/)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="run only these sections")
    parser.add_argument("--serving-model", default="jv_bilstm_attn", help="model the serving figures use")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: re-render RESULTS.md and the plots from DIR/results.json")
    args = parser.parse_args(argv)
    if args.report_only:
        return rerender(args.out_dir)
    mode = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    machine = machine_info()
    models = model_names()
    figures: dict[str, dict] = {}
    raw: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        for section in args.sections:
            t0 = time.perf_counter()
            if section == "runtime":
                figures.update(runtime.run(mode, models))
            elif section == "efficiency":
                figures.update(efficiency.run(mode, models))
            elif section == "int8":
                figures.update(int8.run(mode, models))
            elif section == "batch_script":
                figures.update(batchscript.run(mode, work))
            elif section == "serving":
                found, raw["serving"] = serving.run(mode, args.serving_model, work)
                figures.update(found)
            print(f"bench: {section} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    machine["loadavg_end"] = __import__("os").getloadavg()
    results = {
        "mode": mode.name,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": time.perf_counter() - started,
        "machine": machine,
        "figures": figures,
    }
    plot_names = [p.name for p in plots.write_all(figures, raw, args.out_dir)]
    results["plots"] = plot_names
    results["raw"] = raw
    write_json(args.out_dir / "results.json", results)
    write_results(args.out_dir / "RESULTS.md", report.render(results, raw, command_for(mode.name, args.out_dir),
                                                             plot_names))
    met = sum(1 for f in figures.values() if f["met"] is True)
    missed = [n for n, f in figures.items() if f["met"] is False]
    print(f"bench: {len(figures)} figures, {met} goals met, missed: {', '.join(missed) or 'none'}; "
          f"{args.out_dir / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
