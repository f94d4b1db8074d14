"""`python batch_infer.py --model NAME --input FILE --output FILE`: predict every sequence of a file.

The code is `seqserve.batch.cli` (seqserve/batch/cli.py); an installed seqserve has it as `seqserve-batch`.
"""

import sys

from seqserve.batch.cli import main

if __name__ == "__main__":
    sys.exit(main())
