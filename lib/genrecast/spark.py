"""Spark session from configuration, and progress logging for long stages."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from genrecast.config import Config

log = logging.getLogger(__name__)
T = TypeVar("T")

# Defaults suited to local[2] on a small machine; any of them can be overridden in spark.conf.
DEFAULT_CONF = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.memory": "4g",
    "spark.sql.session.timeZone": "UTC",
    "spark.task.maxFailures": "4",
    "spark.speculation": "false",
    "spark.python.worker.reuse": "true",
    # Python <-> JVM socket handshakes (barrier(), allGather(), collect) give up after 15 s by
    # default; a CPU-starved 2-core machine was seen to exceed that in train's barrier, failing
    # the job. Spark hands the same value to the driver's and the workers' Python side.
    "spark.python.authenticate.socketTimeout": "120s",
}

# GENRECAST_FORWARD_AWS_ENV=1: hand these AWS credential-chain variables from the driver's
# environment to the executors as spark.executorEnv.* (set here, in the driver process: never on
# a command line, where `ps` shows them, nor in a file). For clusters whose nodes have no
# credentials of their own (Spark standalone without instance roles); with instance or pod
# roles (EMR, Dataproc, EKS IRSA) leave it unset.
FORWARD_AWS_ENV = "GENRECAST_FORWARD_AWS_ENV"
AWS_ENV_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION")


def forwarded_executor_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """``spark.executorEnv.NAME`` settings for the AWS variables set in ``environ``, if
    ``GENRECAST_FORWARD_AWS_ENV=1`` is among them; else nothing. Values are never logged."""
    environ = dict(os.environ if environ is None else environ)
    if environ.get(FORWARD_AWS_ENV) != "1":
        return {}
    return {f"spark.executorEnv.{name}": environ[name] for name in AWS_ENV_VARS if environ.get(name)}


def get_spark(cfg: Config) -> Any:
    """Create (or reuse) the SparkSession named in the config.

    Executors run the same interpreter as the driver unless PYSPARK_PYTHON says otherwise
    (on a cluster, point it at the shipped environment).
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if cfg.spark.master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(cfg.spark.app_name)
    # Under spark-submit the JVM gateway already exists and --master wins over the config.
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        builder = builder.master(cfg.spark.master)
    for key, value in {**DEFAULT_CONF, **cfg.spark.conf}.items():
        builder = builder.config(key, value)
    forwarded = forwarded_executor_env()
    for key, value in forwarded.items():
        builder = builder.config(key, value)
    if forwarded:
        log.info("executors get %s from the driver's environment", ", ".join(k.split(".")[-1] for k in forwarded))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


@contextlib.contextmanager
def spark_session(cfg: Config) -> Iterator[Any]:
    """``with spark_session(cfg) as spark:`` - a session that is stopped however the job ends."""
    spark = get_spark(cfg)
    try:
        yield spark
    finally:
        spark.stop()


def with_progress(spark: Any, label: str, action: Callable[[], T], every: float = 10.0) -> T:
    """Run a Spark action, logging ``label: done/total tasks`` every ``every`` seconds."""
    sc = spark.sparkContext
    group = f"genrecast-{label}-{time.monotonic_ns()}"
    sc.setJobGroup(group, label)
    stop = threading.Event()
    start = time.monotonic()

    def report() -> None:
        tracker = sc.statusTracker()
        while not stop.wait(every):
            done = total = failed = 0
            for job_id in tracker.getJobIdsForGroup(group):
                job = tracker.getJobInfo(job_id)
                for stage_id in job.stageIds if job else []:
                    stage = tracker.getStageInfo(stage_id)
                    if stage:
                        done += stage.numCompletedTasks
                        total += stage.numTasks
                        failed += stage.numFailedTasks
            if total:
                extra = f", {failed} task retries" if failed else ""
                log.info("%s: %d/%d tasks done, %.0fs%s", label, done, total, time.monotonic() - start, extra)

    thread = threading.Thread(target=report, daemon=True)
    thread.start()
    try:
        return action()
    finally:
        stop.set()
        thread.join()
        sc.setLocalProperty("spark.jobGroup.id", None)
