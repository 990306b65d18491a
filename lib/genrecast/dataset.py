"""Where the tables live under ``storage.root`` (DESIGN.md layout), and opening the mel dataset.

The mel dataset's Petastorm metadata (``_common_metadata``: the pickled Unischema and the row
groups of each file) is built here and committed in the same journal step as the data files, its
sha256 recorded in the table's ``_table.json``. Readers check it (:func:`check_mel_metadata`)
before petastorm unpickles it: a file changed outside a commit, or one whose pickle names anything
but the schema classes this code writes, is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from functools import lru_cache
from typing import Any

from genrecast import commit
from genrecast.config import Config
from genrecast.errors import JobError
from genrecast.storage import Storage, join, petastorm_url

IndexRow = tuple[str, str, "str | None", str]  # (track_id, audio_sha256, genre, file)


def mels_uri(cfg: Config) -> str:
    return join(cfg.storage.root, "datasets", "mels")


def manifest_uri(cfg: Config) -> str:
    """The catalogue manifest (:mod:`genrecast.manifest`), written by ingest."""
    return join(cfg.storage.root, "manifest")


def rejects_uri(cfg: Config, job: str | None = None, model_id: str | None = None) -> str:
    """``<root>/rejects`` (all jobs, read as one hive-partitioned dataset), or one job's own
    table: ``rejects/job=ingest``, ``rejects/job=score/model=<id>`` (one writer each)."""
    base = join(cfg.storage.root, "rejects")
    if job is None:
        return base
    uri = join(base, f"job={job}")
    return join(uri, f"model={model_id}") if model_id else uri


def scores_uri(cfg: Config, model_id: str) -> str:
    return join(cfg.storage.root, "scores", f"model={model_id}")


def timelines_uri(cfg: Config, model_id: str) -> str:
    """The per-clip table beside the scores (``score.keep_timeline``)."""
    return join(cfg.storage.root, "timelines", f"model={model_id}")


def neighbours_uri(cfg: Config, model_id: str) -> str:
    return join(cfg.storage.root, "neighbours", f"model={model_id}")


def previous_rejects(
    storage: Storage, uri: str, prefix: str, features_key: str | None = None
) -> tuple[list[str], dict[str, str], set[tuple[str, str, str, str | None]]]:
    """A job's earlier rejects (files ``<prefix>*.parquet`` under ``uri``): (the files, sha256 of
    each source rejected under ``features_key``, (source, stage, reason, features_key) keys) - so
    that an unchanged bad file is not decoded again, nor reported twice, while one rejected
    under other feature settings (or before keys existed) is retried."""
    files = [f for f in commit.table_files(storage, uri) if f.rsplit("/", 1)[-1].startswith(prefix)]
    shas: dict[str, str] = {}
    keys: set[tuple[str, str, str, str | None]] = set()
    for f in files:
        for row in storage.read_parquet(f).to_pylist():
            key = row.get("features_key")
            keys.add((row["source_uri"], row["stage"], row["reason"], key))
            if row["audio_sha256"] and key == features_key:
                shas[row["source_uri"]] = row["audio_sha256"]
    return files, shas, keys


def reject_key(row: dict) -> tuple[str, str, str, str | None]:
    """The key of a rejects row in :func:`previous_rejects`."""
    return row["source_uri"], row["stage"], row["reason"], row.get("features_key")


METADATA = "_common_metadata"
UNISCHEMA_KEY = b"dataset-toolkit.unischema.v1"
ROW_GROUPS_KEY = b"dataset-toolkit.num_row_groups_per_file.v1"
METADATA_SHA_KEY = "metadata_sha256"  # in the table's _table.json


def mel_rows_per_group(audio: Any, ingest: Any) -> int:
    """Clips per Parquet row group of the mel dataset: ``ingest.row_group_size_mb`` of float32
    (n_mels x clip_frames) clips (ingest writes and compaction rewrites with this)."""
    clip_bytes = audio.n_mels * audio.clip_frames * 4
    return max(1, ingest.row_group_size_mb * 2**20 // clip_bytes)


def petastorm_metadata(unischema: Any, arrow_schema: Any, row_groups: dict[str, int]) -> bytes:
    """``_common_metadata`` bytes as petastorm's ``materialize_dataset`` writes them: the data
    files' Arrow schema with the pickled Unischema and ``{relative path: row groups}``."""
    import pyarrow.parquet as pq

    meta = dict(arrow_schema.metadata or {})
    meta[UNISCHEMA_KEY] = pickle.dumps(unischema)
    meta[ROW_GROUPS_KEY] = json.dumps(dict(sorted(row_groups.items()))).encode()
    buf = io.BytesIO()
    pq.write_metadata(arrow_schema.with_metadata(meta), buf)
    return buf.getvalue()


def metadata_row_groups(data: bytes) -> dict[str, int]:
    """``{relative path: row groups}`` of ``_common_metadata`` bytes (no unpickling)."""
    import pyarrow.parquet as pq

    kv = pq.read_metadata(io.BytesIO(data)).metadata or {}
    if ROW_GROUPS_KEY not in kv:
        return {}
    return {str(k): int(v) for k, v in json.loads(kv[ROW_GROUPS_KEY]).items()}


@lru_cache(maxsize=1)
def _schema_globals() -> frozenset[tuple[str, str]]:
    """The (module, name) globals a pickled mel Unischema refers to, as this code writes it."""
    from genrecast.config import AudioConf
    from genrecast.schema import mel_schema

    seen: set[tuple[str, str]] = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            seen.add((module, name))
            return super().find_class(module, name)

    Recorder(io.BytesIO(pickle.dumps(mel_schema(AudioConf())))).load()
    return frozenset(seen)


def check_unischema_pickle(data: bytes, source: str) -> None:
    """Refuse a pickled Unischema that names any global outside the schema classes (petastorm's
    own allowlist admits all of ``builtins``, ``eval`` included). Unpickles with that allowlist."""
    allowed = _schema_globals()

    class Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) not in allowed:
                raise JobError(f"{source}: the Unischema pickle names {module}.{name}: refusing to load it")
            return super().find_class(module, name)

    try:
        Restricted(io.BytesIO(data)).load()
    except JobError:
        raise
    except Exception as exc:
        raise JobError(f"{source}: unreadable Unischema pickle ({type(exc).__name__})") from None


def check_mel_metadata(storage: Storage, cfg: Config, files: list[str] | None = None) -> list[str]:
    """Before petastorm opens the mel dataset: its ``_common_metadata`` is the one committed (sha256
    in ``_table.json``), names only the schema classes, and lists exactly the committed files.
    Returns those files; raises :class:`~genrecast.errors.JobError` with one line otherwise."""
    import pyarrow.parquet as pq

    ds_uri = mels_uri(cfg)
    files = commit.snapshot(storage, ds_uri) if files is None else files
    meta_uri = join(ds_uri, METADATA)
    if not files:
        raise JobError(f"{ds_uri}: the mel dataset is empty (run genrecast ingest)")
    recorded = commit.read_state(storage, ds_uri).get(METADATA_SHA_KEY)
    if not recorded:
        raise JobError(
            f"{ds_uri}: no committed Petastorm metadata hash (written before this version): run genrecast ingest"
        )
    if not storage.exists(meta_uri):
        raise JobError(f"{meta_uri} is missing: run genrecast ingest")
    data = storage.read_bytes(meta_uri)
    if hashlib.sha256(data).hexdigest() != recorded:
        raise JobError(
            f"{meta_uri} is not the metadata committed with the data (sha256 differs from _table.json): "
            "refusing to open it; it was changed outside a genrecast commit"
        )
    kv = pq.read_metadata(io.BytesIO(data)).metadata or {}
    if UNISCHEMA_KEY not in kv:
        raise JobError(f"{meta_uri}: no Unischema")
    check_unischema_pickle(kv[UNISCHEMA_KEY], meta_uri)
    listed = set(metadata_row_groups(data))
    committed = {f[len(ds_uri) + 1 :] for f in files}
    if listed != committed:
        raise JobError(
            f"{meta_uri} lists {len(listed)} file(s), the dataset holds {len(committed)} "
            f"({len(committed - listed)} unlisted): run genrecast ingest"
        )
    return files


def make_mel_reader(cfg: Config, **kwargs: Any) -> Any:
    """petastorm ``make_reader`` over the mel dataset, local or S3 (endpoint from the config),
    after :func:`check_mel_metadata`.

    Keyword arguments go to ``make_reader`` (``schema_fields``, ``cur_shard``, ``num_epochs``...).
    """
    from petastorm import make_reader

    uri = mels_uri(cfg)
    check_mel_metadata(Storage.from_config(cfg), cfg)
    factory = Storage.from_config(cfg).petastorm_filesystem_factory(uri)
    if factory is not None:
        kwargs.setdefault("filesystem", factory())
    return make_reader(petastorm_url(uri), **kwargs)


def _index_file(uri: str, storage: Storage) -> list[IndexRow]:
    table = storage.read_parquet(uri, columns=["track_id", "audio_sha256", "genre"])
    columns = (table.column(c).to_pylist() for c in ("track_id", "audio_sha256", "genre"))
    seen = set(zip(*columns, strict=True))
    return [(t, s, g, uri) for t, s, g in sorted(seen, key=lambda r: (r[0], r[1], r[2] or ""))]


def index_dataset(spark: Any, cfg: Config, files: list[str] | None = None) -> list[IndexRow]:
    """One row per (track, file) in the mel dataset, read on executors (track_id, hash and
    genre columns only: metadata-sized, never the mels)."""
    storage = Storage.from_config(cfg)
    files = commit.table_files(storage, mels_uri(cfg)) if files is None else files
    if not files:
        return []
    return spark.sparkContext.parallelize(files, len(files)).flatMap(lambda f: _index_file(f, storage)).collect()
