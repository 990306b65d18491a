"""spark-submit entry point: ``spark-submit jobs/train.py --conf conf/cluster.yaml [--workers N] [--epochs E]``."""

import sys

from genrecast.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
