"""spark-submit entry point: ``spark-submit jobs/score.py --conf FILE --mode nightly|backfill [--model ID|latest]``."""

import sys

from genrecast.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
