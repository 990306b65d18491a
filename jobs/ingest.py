"""spark-submit entry point: ``spark-submit jobs/ingest.py --conf conf/cluster.yaml [--full]``."""

import sys

from genrecast.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
