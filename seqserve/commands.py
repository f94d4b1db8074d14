"""Entry points of the commands that need the `train` extra (torch, onnx, aeon, ...).

On a serving-only install they print one line naming the extra and exit 2, instead of a traceback: the
model side is imported only once the command runs. Imported as modules, the missing dependency propagates.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

TRAIN_EXTRA = ("torch", "onnx", "aeon", "tqdm", "matplotlib")  # what `pip install -e '.[train]'` adds


def _train_command(module: str, prog: str, doing: str) -> Callable[[], int]:
    def main() -> int:
        try:
            command = importlib.import_module(module).main
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in TRAIN_EXTRA:
                raise
            print(f"{prog}: error: {doing} needs the train extra ({exc.name} is not installed): "
                  "pip install -e '.[train]'", file=sys.stderr)
            return 2
        return int(command())

    return main


export = _train_command("seqserve.model.export", "export.py", "exporting")
fit = _train_command("seqserve.model.fit", "model.fit", "fitting")
