"""spark-submit entry point: ``spark-submit jobs/compact.py --conf FILE [--table NAME|all] [--model ID]``."""

import sys

from genrecast.cli import main

if __name__ == "__main__":
    sys.exit(main(["compact", *sys.argv[1:]]))
