"""spark-submit entry point: ``spark-submit jobs/nightly.py --conf FILE [--model ID|latest] [--no-compact]``.

Exit code 0 ok, 1 a stage failed, 2 bad configuration or a busy table (retry later); the run
report is written to ``<storage.root>/reports/nightly/<run_id>.json`` either way.
"""

import sys

from genrecast.cli import main

if __name__ == "__main__":
    sys.exit(main(["nightly", *sys.argv[1:]]))
