"""A real multi-process cluster: a Spark standalone Master and two Workers on 127.0.0.1
(tests/sparkcluster.py), SeaweedFS as S3, and the jobs submitted with scripts/submit.sh from the
packaged artefacts (scripts/package.sh: genrecast.zip on --py-files). Catalogue, dataset,
models and scores all live in S3.

The Workers start without AWS credentials: the submitting environment hands them to the
executors (GENRECAST_FORWARD_AWS_ENV=1), so every S3 access on a Worker proves the forwarding.
Executors run this venv's Python (the Workers share this machine), but import genrecast from the
shipped zip, which the probe job checks.

The tests share one cluster and run in order: probe -> ingest with a Worker killed mid-job ->
train on both Workers -> score -> train with a Worker killed mid-training (fails clearly).
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from sparkcluster import StandaloneCluster, cmdline, group_pids

from genrecast import commit, registry
from genrecast.config import load_config
from genrecast.dataset import mels_uri, scores_uri
from genrecast.storage import Storage

from conftest import REPO, synthetic_track, write_audio
from s3server import CREDENTIALS, SeaweedS3

pytestmark = pytest.mark.cluster
BUCKET = "genrecast-cluster"
KINDS = ("low", "high", "noise")
PER_KIND = 6  # 18 tracks of 4.5 s: 2 clips each
TRACKS = {f"{kind}/{kind}{i:02d}" for kind in KINDS for i in range(PER_KIND)}
SUBMIT_TIMEOUT = 240


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """SeaweedFS, and its credentials in this (the test's) process for checking outputs; the
    cluster's daemons are started without them (see ``cluster``)."""
    mp = pytest.MonkeyPatch()
    for key, value in CREDENTIALS.items():
        mp.setenv(key, value)
    server = SeaweedS3(tmp_path_factory.mktemp("cluster-weed")).start()
    try:
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        server.stop()
        mp.undo()


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """`make package` into a scratch folder: the artefacts every job below is submitted with."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(["bash", "scripts/package.sh"], cwd=REPO, env={**os.environ, "DIST": str(out)}, check=True)
    assert (out / "genrecast.zip").is_file() and list(out.glob("genrecast-*-py3-none-any.whl"))
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # The daemons (and so the executors) get no AWS credentials of their own.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GENRECAST"))}
    with StandaloneCluster(tmp_path_factory.mktemp("spark"), workers=2, cores=1, memory="2g", env=env) as c:
        yield c


@pytest.fixture(scope="module")
def conf(s3, cluster, tmp_path_factory):
    """The catalogue in S3 and a config naming the cluster's master (submit.sh reads it)."""
    local = tmp_path_factory.mktemp("cluster-cat")
    rng = np.random.default_rng(1)
    client = s3.client()
    rows = ["track_id,genre,artist"]
    for track_id in sorted(TRACKS):
        kind = track_id.split("/")[0]
        path = write_audio(local / f"{track_id}.wav", synthetic_track(kind, rng, seconds=4.5))
        client.upload_file(str(path), BUCKET, f"catalogue/audio/{track_id}.wav")
        rows.append(f"{track_id},{kind},{kind}-artist{track_id[-1]}")
    client.put_object(Bucket=BUCKET, Key="catalogue/labels.csv", Body=("\n".join(rows) + "\n").encode())
    path = local / "cluster-test.yaml"
    path.write_text(
        f"spark:\n  master: {cluster.master_url}\n  app_name: genrecast-cluster-test\n  conf:\n"
        "    spark.driver.memory: 1g\n"
        "    spark.executor.memory: 1g\n"
        "    spark.executor.cores: '1'\n"
        "    spark.task.cpus: '1'\n"
        "    spark.scheduler.barrier.maxConcurrentTasksCheck.interval: 2s\n"
        f"storage: {{root: s3://{BUCKET}/root, s3: {{endpoint_url: '{s3.endpoint_url}', region: us-east-1}}}}\n"
        f"catalogue: {{audio_uri: s3://{BUCKET}/catalogue/audio, labels_uri: s3://{BUCKET}/catalogue/labels.csv}}\n"
        f"genres: [{', '.join(KINDS)}]\n"
        "ingest: {tracks_per_partition: 3, row_group_size_mb: 1}\n"
        "train: {workers: 2, epochs: 2, batch_size: 8, patience: 5, split: {test: 0.2, val: 0.2, seed: 0}}\n"
    )
    return path


def submit_env(dist: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENRECAST")}
    env.update(CREDENTIALS)
    env.update(
        GENRECAST_FORWARD_AWS_ENV="1",  # credentials reach executors only through the driver
        PYSPARK_PYTHON=sys.executable,  # the Workers share this machine and its venv
        DIST=str(dist),
        ENV_ARCHIVE="0",
        SPARK_LOCAL_IP="127.0.0.1",
        **extra,
    )
    env.pop("PYSPARK_GATEWAY_PORT", None)
    return env


class Submitted:
    """One `scripts/submit.sh JOB ...` run in its own process group (killed if it overruns)."""

    def __init__(self, job: str, conf: Path, dist: Path, *args: str, log_dir: Path, **env: str):
        self.name = f"{job.rsplit('/', 1)[-1].removesuffix('.py')}-{time.monotonic_ns()}"
        self.out, self.err = log_dir / f"{self.name}.out", log_dir / f"{self.name}.err"
        self.started = time.monotonic()
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                ["bash", "scripts/submit.sh", job, *args],
                cwd=REPO,
                env={**submit_env(dist, **env), "CONF": str(conf)},
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait(self, timeout: float = SUBMIT_TIMEOUT) -> Submitted:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
            raise AssertionError(f"{self.name} ran over {timeout:.0f}s:\n{self.tail()}") from None
        finally:
            if self.proc.poll() is not None:
                try:
                    os.killpg(self.proc.pid, 9)  # anything it left (a Python driver) goes too
                except ProcessLookupError:
                    pass
        self.seconds = time.monotonic() - self.started
        return self

    @property
    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def tail(self, n: int = 40) -> str:
        return "\n".join((self.stdout + self.stderr).splitlines()[-n:])

    def ok(self) -> Submitted:
        assert self.proc.returncode == 0, f"{self.name} exited {self.proc.returncode}:\n{self.tail()}"
        return self


def app_dirs(cluster: StandaloneCluster) -> set[Path]:
    return {p for d in cluster.workers.values() if d.work_dir for p in d.work_dir.glob("app-*")}


def wait_for_log(cluster: StandaloneCluster, before: set[Path], pattern: str, job: Submitted, timeout: float = 180):
    """(worker name, app id) of the first executor of a new application whose stderr matches."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert job.proc.poll() is None, f"{job.name} ended before '{pattern}' showed:\n{job.tail()}"
        for name, daemon in cluster.workers.items():
            if not daemon.alive() or not daemon.work_dir:
                continue
            for app in daemon.work_dir.glob("app-*"):
                if app in before:
                    continue
                for stderr in app.glob("*/stderr"):
                    if regex.search(stderr.read_text(errors="replace")):
                        return name, app.name
        time.sleep(0.1)
    raise AssertionError(f"'{pattern}' did not show in an executor log within {timeout:.0f}s")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("submits")


def cfg_of(conf: Path):
    return load_config(conf, environ={})


# -- the tests, in order ---------------------------------------------------------------------


def test_submit_builds_the_command_from_the_config(dist, tmp_path):
    """conf/cluster.yaml is valid, and submit.sh turns it into spark-submit options."""
    load_config(REPO / "conf/cluster.yaml", environ={})
    env = {**submit_env(dist), "CONF": "conf/cluster.yaml", "DRY_RUN": "1"}
    env.pop("PYSPARK_PYTHON")
    (dist / "genrecast-env.tar.gz").write_bytes(b"")  # as if built with ENV_ARCHIVE=1
    try:
        run = subprocess.run(
            ["bash", "scripts/submit.sh", "ingest", "--full"], cwd=REPO, env={**env, "ENV_ARCHIVE": "auto"},
            capture_output=True, text=True, check=True,
        )
    finally:
        (dist / "genrecast-env.tar.gz").unlink()
    line = run.stderr
    assert line.startswith("submit: ") and "spark-submit --master yarn --deploy-mode client --name genrecast" in line
    for option in (
        "--conf spark.dynamicAllocation.enabled=false",
        "--conf spark.executor.memory=4g",
        f"--py-files {dist}/genrecast.zip",
        f"--archives {dist}/genrecast-env.tar.gz#environment",
        "--conf spark.pyspark.python=./environment/bin/python",
        "jobs/ingest.py --conf conf/cluster.yaml --full",
    ):
        assert option in line, (option, line)
    assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in line and "AWS_" not in line
    bad = subprocess.run(
        ["bash", "scripts/submit.sh", "nope"], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2 and "unknown job 'nope'" in bad.stderr


def test_executors_run_the_shipped_package_with_forwarded_credentials(cluster, conf, dist, runs):
    """A barrier stage of 2 tasks lands on both Workers; each task - and a child process started
    as training starts its TF process - imports genrecast from the shipped zip, and reads the
    catalogue in S3 with credentials that only the driver had."""
    job = Submitted("tests/cluster_probe.py", conf, dist, "--tasks", "2", log_dir=runs).wait().ok()
    line = next(x for x in job.stdout.splitlines() if x.startswith("PROBE "))
    probe = json.loads(line[len("PROBE ") :])
    tasks = sorted(probe["tasks"], key=lambda t: t["rank"])
    assert [t["rank"] for t in tasks] == [0, 1]
    workers = {Path(t["cwd"]).relative_to(cluster.base).parts[0] for t in tasks}
    assert workers == {"worker0", "worker1"}, tasks  # one barrier task per Worker
    for t in tasks:
        shipped = os.path.join(t["cwd"], "genrecast.zip", "genrecast", "__init__.py")  # Spark's copy
        assert os.path.normpath(os.path.join(t["cwd"], t["genrecast"])) == shipped, t
        assert t["child_genrecast"] == shipped, t
        assert t["python"] == sys.executable
        assert t["catalogue_files"] == len(TRACKS)
    assert "/genrecast.zip/genrecast/" in probe["driver_genrecast"]


def test_ingest_completes_without_duplicates_when_a_worker_dies(cluster, conf, dist, runs):
    """SIGKILL one Worker (and its executor, Python workers) as soon as it runs an ingest task:
    Spark re-runs the lost tasks on the other Worker, each rewriting its own _tmp file, and the
    driver commits once - every clip of every track exactly once."""
    before = app_dirs(cluster)
    job = Submitted("ingest", conf, dist, log_dir=runs)
    victim, _app = wait_for_log(cluster, before, r"Running task \d+\.\d+ in stage", job)
    killed = cluster.kill_worker(victim)
    job.wait().ok()
    assert len(killed) >= 2, killed  # the Worker and at least its executor
    assert re.search(r"Lost (executor|task)", job.stderr), job.tail()
    assert f"ok {len(TRACKS)} ({2 * len(TRACKS)} clips" in job.stdout, job.tail()

    cfg = cfg_of(conf)
    storage = Storage.from_config(cfg)
    files = commit.table_files(storage, mels_uri(cfg))
    table = pa.concat_tables(storage.read_parquet(f, columns=["track_id", "clip_index"]) for f in files)
    keys = list(zip(table.column("track_id").to_pylist(), table.column("clip_index").to_pylist(), strict=True))
    assert len(keys) == len(set(keys)) == 2 * len(TRACKS)  # no duplicates, nothing missing
    assert collections.Counter(t for t, _ in keys) == {t: 2 for t in TRACKS}
    left = [u for u, _ in storage.list_files(mels_uri(cfg)) if "/_tmp/" in u or u.endswith("_commit.json")]
    assert not left

    cluster.start_worker()  # back to two Workers for training
    cluster.wait_for_workers(2)


def test_train_runs_one_tf_worker_on_each_spark_worker(cluster, conf, dist, runs):
    before = app_dirs(cluster)
    job = Submitted("train", conf, dist, "--workers", "2", "--epochs", "2", log_dir=runs).wait().ok()
    cfg = cfg_of(conf)
    model_id = registry.resolve_model_id(cfg, "latest")
    assert f"model {model_id}:" in job.stdout and "training: 2 workers, 2 epochs" in job.stdout, job.tail()
    ranks = {}
    for name, daemon in cluster.workers.items():
        if daemon.alive():
            text = "".join(
                p.read_text(errors="replace") for app in set(daemon.work_dir.glob("app-*")) - before
                for p in app.glob("*/stderr")
            )
            ranks[name] = set(re.findall(r"\[train worker (\d)\]", text))
    assert sorted(map(tuple, ranks.values())) == [("0",), ("1",)], ranks  # one TF worker per Spark Worker


def test_score_backfill_on_the_cluster(cluster, conf, dist, runs):
    job = Submitted("score", conf, dist, "--mode", "backfill", log_dir=runs).wait().ok()
    cfg = cfg_of(conf)
    storage = Storage.from_config(cfg)
    model_id = registry.resolve_model_id(cfg, "latest")
    files = commit.table_files(storage, scores_uri(cfg, model_id))
    ids = [t for f in files for t in storage.read_parquet(f, columns=["track_id"]).column("track_id").to_pylist()]
    assert sorted(ids) == sorted(TRACKS), job.tail()


def test_training_fails_clearly_when_a_worker_dies(cluster, conf, dist, runs):
    """Kill the Worker running TF worker 1 mid-training: Spark aborts the barrier stage and kills
    the surviving task, whose TF process (blocked in a collective with the dead one) dies with
    it; the job exits 1 with one clear line, in bounded time, and publishes nothing."""
    cfg = cfg_of(conf)
    latest = registry.resolve_model_id(cfg, "latest")
    before = app_dirs(cluster)
    job = Submitted(
        "train", conf, dist, "--workers", "2", "--epochs", "500", log_dir=runs, GENRECAST__TRAIN__PATIENCE="1000"
    )
    wait_for_log(cluster, before, r"\[train worker 0\] epoch 1/", job)
    victim, _ = wait_for_log(cluster, before, r"\[train worker 1\]", job, timeout=5)
    survivor = next(n for n, d in cluster.workers.items() if d.alive() and n != victim)
    killed_at = time.monotonic()
    cluster.kill_worker(victim)
    job.wait(timeout=120)
    took = time.monotonic() - killed_at
    assert job.proc.returncode == 1, job.tail()
    # spark-submit merges the Python driver's stderr into its stdout (PythonRunner).
    errors = [x for x in job.stdout.splitlines() if x.startswith("genrecast train: error:")]
    assert len(errors) == 1 and "training stage of 2 barrier tasks failed, nothing published" in errors[0], job.tail()
    assert "barrier" in errors[0].lower()
    assert took < 90, took
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = [p for p in group_pids(cluster.workers[survivor].pgid) if "genrecast.train_worker" in cmdline(p)]
        if not left:
            break
        time.sleep(0.5)
    assert not left, "a TF worker outlived its Spark task"
    assert registry.resolve_model_id(cfg, "latest") == latest


def test_no_credentials_in_cluster_logs_or_outputs(cluster, runs):
    secret = CREDENTIALS["AWS_SECRET_ACCESS_KEY"].encode()
    for folder in (cluster.base, runs):
        for path in folder.rglob("*"):
            if path.is_file() and path.stat().st_size < 50_000_000:
                assert secret not in path.read_bytes(), path
