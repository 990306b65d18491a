"""spark-submit entry point: ``spark-submit jobs/recommend.py --conf conf/cluster.yaml [--model ID] [-k 10]``."""

import sys

from genrecast.cli import main

if __name__ == "__main__":
    sys.exit(main(["recommend", *sys.argv[1:]]))
