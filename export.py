"""`python export.py CHECKPOINT --name NAME`: export to ONNX, prove parity, publish to the model repository.

The code is `seqserve.model.export` (model/export.py); an installed seqserve has it as `seqserve-export`.
"""

import sys

from seqserve.commands import export

if __name__ == "__main__":
    sys.exit(export())
