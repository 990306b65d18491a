"""spark-submit entry point used by tests/test_cluster.py: what do a cluster's executors see?

``scripts/submit.sh tests/cluster_probe.py --conf FILE [--tasks N]`` runs one barrier stage of N
tasks (as training does) and prints one line ``PROBE {json}``: per task, where it ran (the
executor's working directory, below its Worker's work dir), where genrecast was imported from,
where a child process started as the training task starts its TF process imports it from, and
whether the task reached the catalogue in S3 with its credentials.
"""

import argparse
import json
import os
import subprocess
import sys

import genrecast
from genrecast.config import load_config
from genrecast.spark import spark_session
from genrecast.storage import Storage
from genrecast.train import worker_env


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conf", required=True)
    parser.add_argument("--tasks", type=int, default=2)
    args = parser.parse_args()
    cfg = load_config(args.conf)
    storage = Storage.from_config(cfg)
    audio_uri = cfg.catalogue.audio_uri

    def probe(_rows):
        from pyspark import BarrierTaskContext

        import genrecast as pkg

        ctx = BarrierTaskContext.get()
        rank = ctx.partitionId()
        child = subprocess.run(
            [sys.executable, "-c", "import genrecast; print(genrecast.__file__)"],
            env=worker_env(["127.0.0.1:0"], rank),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        files = sum(1 for _ in storage.list_files(audio_uri))
        ctx.barrier()
        yield {
            "rank": rank,
            "cwd": os.getcwd(),
            "python": sys.executable,
            "genrecast": pkg.__file__,
            "child_genrecast": child,
            "catalogue_files": files,
        }

    with spark_session(cfg) as spark:
        rows = spark.sparkContext.parallelize(range(args.tasks), args.tasks).barrier().mapPartitions(probe).collect()
        app_id = spark.sparkContext.applicationId
    print("PROBE " + json.dumps({"app_id": app_id, "driver_genrecast": genrecast.__file__, "tasks": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
