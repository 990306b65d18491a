"""A real Spark standalone cluster for tests: one Master and N Workers on 127.0.0.1, started
from the pyspark install with ``spark-class`` (not the daemonizing sbin scripts), so the test
owns every process.

Each daemon runs in its own process group (session). A Worker's group holds everything it
starts - its executor JVMs, their Python workers, the TensorFlow processes of a training task -
so :meth:`StandaloneCluster.kill_worker` is "this machine died", and :meth:`stop` leaves
nothing behind. Logs, work and scratch folders live under the given base folder.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_pids(pgid: int) -> list[int]:
    """Live processes of a process group (from /proc; zombies excluded)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry))
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass
class Daemon:
    name: str
    proc: subprocess.Popen
    log: Path
    port: int
    ui_port: int
    work_dir: Path | None = None

    @property
    def pgid(self) -> int:
        return self.proc.pid  # start_new_session: the group is led by the daemon itself

    def alive(self) -> bool:
        return self.proc.poll() is None


class StandaloneCluster:
    """``with StandaloneCluster(base, workers=2) as cluster:`` - ``cluster.master_url`` is
    ``spark://127.0.0.1:<port>``. ``env`` is the daemons' environment (executors inherit it)."""

    def __init__(
        self,
        base: Path,
        workers: int = 2,
        cores: int = 1,
        memory: str = "2g",
        env: dict[str, str] | None = None,
    ):
        self.base = Path(base)
        self.n_workers = workers
        self.cores = cores
        self.memory = memory
        self.spark_home = _spark_home()
        (self.base / "conf").mkdir(parents=True, exist_ok=True)  # empty: no site settings leak in
        (self.base / "local").mkdir(exist_ok=True)
        self.env = {
            **(env if env is not None else os.environ),
            "SPARK_HOME": str(self.spark_home),
            "SPARK_CONF_DIR": str(self.base / "conf"),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_LOCAL_DIRS": str(self.base / "local"),
            "SPARK_DAEMON_MEMORY": "384m",
        }
        for key in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "SPARK_MASTER_HOST"):
            self.env.pop(key, None)
        self.master: Daemon | None = None
        self.workers: dict[str, Daemon] = {}
        self.killed: set[str] = set()  # Workers killed on purpose (kill_worker)
        self._started = 0

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> StandaloneCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def master_url(self) -> str:
        assert self.master
        return f"spark://127.0.0.1:{self.master.port}"

    @property
    def ui_url(self) -> str:
        assert self.master
        return f"http://127.0.0.1:{self.master.ui_port}"

    def _spawn(self, name: str, args: list[str], port: int, ui_port: int, work_dir: Path | None = None) -> Daemon:
        log = self.base / f"{name}.log"
        with open(log, "ab") as fh:
            proc = subprocess.Popen(
                [str(self.spark_home / "bin" / "spark-class"), *args],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.base,
                start_new_session=True,
            )
        return Daemon(name, proc, log, port, ui_port, work_dir)

    def start(self, timeout: float = 90.0) -> StandaloneCluster:
        try:
            port, ui = free_port(), free_port()
            self.master = self._spawn(
                "master",
                ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                 "--webui-port", str(ui)],
                port,
                ui,
            )
            for _ in range(self.n_workers):
                self.start_worker()
            self.wait_for_workers(self.n_workers, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def start_worker(self) -> Daemon:
        """Start one more Worker (named worker0, worker1, ... in start order)."""
        name = f"worker{self._started}"
        self._started += 1
        work_dir = self.base / name
        work_dir.mkdir(exist_ok=True)
        port, ui = free_port(), free_port()
        daemon = self._spawn(
            name,
            ["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--port", str(port),
             "--webui-port", str(ui), "--cores", str(self.cores), "--memory", self.memory,
             "--work-dir", str(work_dir), self.master_url],
            port,
            ui,
            work_dir,
        )
        self.workers[name] = daemon
        return daemon

    def kill_worker(self, name: str) -> list[int]:
        """SIGKILL a Worker and everything it started (its process group): a machine lost
        mid-job. Returns the pids that were killed."""
        daemon = self.workers[name]
        pids = group_pids(daemon.pgid)
        self.killed.add(name)
        _killpg(daemon.pgid, signal.SIGKILL)
        daemon.proc.wait(timeout=30)
        return pids

    def stop(self) -> None:
        """Stop every daemon and whatever it started; SIGKILL what is left after 10 s."""
        daemons = [d for d in [*self.workers.values(), self.master] if d]
        for d in daemons:
            _killpg(d.pgid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for d in daemons:
            try:
                d.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for d in daemons:  # the group, not just its leader: executors, Python workers, TF processes
            _killpg(d.pgid, signal.SIGKILL)
            if d.proc.poll() is None:
                d.proc.wait(timeout=10)

    # -- state ---------------------------------------------------------------------------
    def status(self) -> dict:
        """The Master's JSON status (workers, applications)."""
        with urllib.request.urlopen(f"{self.ui_url}/json/", timeout=5) as resp:
            return json.load(resp)

    def alive_workers(self) -> list[dict]:
        try:
            return [w for w in self.status().get("workers", []) if w.get("state") == "ALIVE"]
        except OSError:
            return []

    def wait_for_workers(self, n: int, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for d in [self.master, *self.workers.values()]:
                if d and d.name not in self.killed and not d.alive():
                    raise RuntimeError(f"spark {d.name} exited with {d.proc.returncode}: see {d.log}")
            if len(self.alive_workers()) >= n:
                return
            time.sleep(0.5)
        raise RuntimeError(f"{n} Spark workers did not register in {timeout:.0f}s: see {self.base}/*.log")

    def executor_logs(self, worker: str, app_id: str | None = None) -> list[Path]:
        """stderr files of the executors this worker ran (for one application, or all)."""
        work = self.workers[worker].work_dir
        assert work
        pattern = f"{app_id or 'app-*'}/*/stderr"
        return sorted(work.glob(pattern))

    def executor_log_text(self, worker: str, app_id: str | None = None) -> str:
        return "".join(p.read_text(errors="replace") for p in self.executor_logs(worker, app_id))
