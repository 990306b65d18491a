"""``genrecast nightly``: ingest -> score (nightly) -> recommend (nightly) -> compact in one Spark session,
with one JSON run report at ``<root>/reports/nightly/<run_id>.json``.

A stage that fails (any exception but an interrupt) is recorded with its exit code and one-line
error; the stages after it are skipped and reported as such. The run's exit code is the worst
stage's: 0 all ok, 1 a job failure, 2 bad configuration or a busy table (retry later).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from genrecast import commit
from genrecast.config import Config
from genrecast.errors import GenrecastError
from genrecast.storage import Storage, join

log = logging.getLogger(__name__)
STAGES = ("ingest", "score", "recommend", "compact")


def report_uri(cfg: Config, run_id: str) -> str:
    return join(cfg.storage.root, "reports", "nightly", f"{run_id}.json")


def summary_counts(summary: Any) -> dict[str, Any]:
    """The numbers of a job summary dataclass (counts, bytes, seconds; Counters as dicts):
    whatever fields it has, so new ones (e.g. bytes fetched) reach the report unasked."""
    out: dict[str, Any] = {}
    for f in fields(summary):
        value = getattr(summary, f.name)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            out[f.name] = round(value, 3) if isinstance(value, float) else value
        elif isinstance(value, Counter | dict) and all(isinstance(v, int | float) for v in value.values()):
            out[f.name] = {str(k): v for k, v in sorted(value.items())}
    for name in ("files_merged", "files_written"):  # CompactSummary's totals are properties
        if hasattr(summary, name):
            out[name] = getattr(summary, name)
    return out


@dataclass
class StageResult:
    name: str
    exit_code: int | None = None  # None: skipped
    seconds: float = 0.0
    counts: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)  # the stage's own summary, as its command prints it
    error: str | None = None
    skipped: str | None = None  # why, when skipped


@dataclass
class NightlyReport:
    run_id: str
    started_at: str
    model: str
    stages: list[StageResult] = field(default_factory=list)
    seconds: float = 0.0
    report_uri: str = ""

    @property
    def exit_code(self) -> int:
        return max((s.exit_code or 0 for s in self.stages), default=0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "started_at": self.started_at,
            "model": self.model,
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 3),
            "stages": [
                {
                    "name": s.name,
                    "exit_code": s.exit_code,
                    "seconds": round(s.seconds, 3),
                    "skipped": s.skipped,
                    "error": s.error,
                    "counts": s.counts,
                    "summary": s.lines,
                }
                for s in self.stages
            ],
        }

    def lines(self) -> list[str]:
        out = [f"nightly {self.run_id}: exit {self.exit_code} in {self.seconds:.1f}s"]
        for s in self.stages:
            if s.skipped:
                out.append(f"  {s.name:<10} skipped ({s.skipped})")
            else:
                status = "ok" if s.exit_code == 0 else f"exit {s.exit_code}: {s.error}"
                out.append(f"  {s.name:<10} {status} ({s.seconds:.1f}s)")
        out.append(f"  report {self.report_uri}")
        return out


def _run_stage(stage: StageResult, fn: Callable[[], Any]) -> None:
    started = time.monotonic()
    try:
        summary = fn()
        stage.exit_code = 0
        stage.counts = summary_counts(summary)
        stage.lines = summary.lines()
    except GenrecastError as exc:  # bad config (2), busy table (2), job failure (1)
        stage.exit_code, stage.error = exc.exit_code, str(exc)
    except Exception as exc:  # a bug or an outage: a job failure, as the CLI reports it
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        stage.exit_code, stage.error = 1, f"{type(exc).__name__}: {first[:300]}"
        log.exception("nightly: stage %s failed", stage.name)
    stage.seconds = time.monotonic() - started
    if stage.exit_code:
        log.error("nightly: stage %s failed (exit %d): %s", stage.name, stage.exit_code, stage.error)


def run_nightly(cfg: Config, spark: Any, model: str = "latest", compact: bool = True) -> NightlyReport:
    """Run the nightly stages in order on ``spark`` and write the report (also when a stage
    failed). ``compact``: end with ``genrecast compact`` over all tables (it merges only tables
    past ``compact.min_files`` small files)."""
    from genrecast.compact import run_compact
    from genrecast.ingest import run_ingest
    from genrecast.recommend import run_recommend
    from genrecast.score import run_score

    started = time.monotonic()
    run_id = commit.new_run_id()
    report = NightlyReport(run_id, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), model)
    jobs: list[tuple[str, Callable[[], Any]]] = [
        ("ingest", lambda: run_ingest(cfg, spark)),
        ("score", lambda: run_score(cfg, spark, mode="nightly", model=model)),
        ("recommend", lambda: run_recommend(cfg, spark, model=model, mode="nightly")),
    ]
    if compact:
        jobs.append(("compact", lambda: run_compact(cfg, spark, "all", model)))
    failed: str | None = None
    for name, fn in jobs:
        stage = StageResult(name)
        report.stages.append(stage)
        if failed:
            stage.skipped = f"{failed} failed"
            continue
        log.info("nightly: stage %s", name)
        _run_stage(stage, fn)
        if stage.exit_code:
            failed = name
    report.seconds = time.monotonic() - started
    report.report_uri = report_uri(cfg, run_id)
    Storage.from_config(cfg).write_bytes(report.report_uri, json.dumps(report.to_dict(), indent=2).encode())
    return report
