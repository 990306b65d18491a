"""Where the tables live under ``storage.root`` (DESIGN.md layout), and opening the mel dataset."""

from __future__ import annotations

from typing import Any

from genrecast import commit
from genrecast.config import Config
from genrecast.storage import Storage, join, petastorm_url

IndexRow = tuple[str, str, "str | None", str]  # (track_id, audio_sha256, genre, file)


def mels_uri(cfg: Config) -> str:
    return join(cfg.storage.root, "datasets", "mels")


def rejects_uri(cfg: Config) -> str:
    return join(cfg.storage.root, "rejects")


def scores_uri(cfg: Config, model_id: str) -> str:
    return join(cfg.storage.root, "scores", f"model={model_id}")


def neighbours_uri(cfg: Config, model_id: str) -> str:
    return join(cfg.storage.root, "neighbours", f"model={model_id}")


def previous_rejects(
    storage: Storage, uri: str, prefix: str
) -> tuple[list[str], dict[str, str], set[tuple[str, str, str]]]:
    """A job's earlier rejects (files ``<prefix>*.parquet`` under ``uri``): (the files, sha256 of
    each rejected source, (source, stage, reason) keys) - so that an unchanged bad file is not
    decoded again, nor reported twice."""
    files = [f for f in commit.table_files(storage, uri) if f.rsplit("/", 1)[-1].startswith(prefix)]
    shas: dict[str, str] = {}
    keys: set[tuple[str, str, str]] = set()
    for f in files:
        for row in storage.read_parquet(f).to_pylist():
            keys.add((row["source_uri"], row["stage"], row["reason"]))
            if row["audio_sha256"]:
                shas[row["source_uri"]] = row["audio_sha256"]
    return files, shas, keys


def make_mel_reader(cfg: Config, **kwargs: Any) -> Any:
    """petastorm ``make_reader`` over the mel dataset, local or S3 (endpoint from the config).

    Keyword arguments go to ``make_reader`` (``schema_fields``, ``cur_shard``, ``num_epochs``...).
    """
    from petastorm import make_reader

    uri = mels_uri(cfg)
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
