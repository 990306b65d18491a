"""Model registry: ``<root>/models/<model_id>/`` with ``model.keras``, ``model.json``,
``split.parquet`` and ``report/``, plus a ``LATEST`` pointer. A model directory without ``model.json`` is an
unfinished run and is never resolved; ``model.json`` is written last."""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any

from genrecast.config import AudioConf, Config
from genrecast.errors import ConfigError, JobError
from genrecast.storage import Storage, join

LATEST = "LATEST"
MODEL_FILE = "model.keras"
MODEL_JSON = "model.json"
SPLIT_FILE = "split.parquet"  # track_id, split (train|val|test), group: see write_split
REPORT_DIR = "report"  # metrics.json, confusion.png, curves.png... (genrecast.train.write_report)
_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,99}$")
AUDIO_KEYS = ("sample_rate", "n_fft", "hop_length", "n_mels", "clip_seconds")


def models_uri(cfg: Config) -> str:
    return join(cfg.storage.root, "models")


def model_uri(cfg: Config, model_id: str) -> str:
    if not _ID.match(model_id):
        raise ConfigError(f"invalid model id {model_id!r}")
    return join(models_uri(cfg), model_id)


def report_uri(cfg: Config, model_id: str) -> str:
    return join(model_uri(cfg, model_id), REPORT_DIR)


def resolve_model_id(cfg: Config, spec: str = "latest") -> str:
    """``latest`` -> the id in ``LATEST``; an id -> itself, if that model is complete."""
    storage = Storage.from_config(cfg)
    if spec == "latest":
        pointer = join(models_uri(cfg), LATEST)
        if not storage.exists(pointer):
            raise ConfigError(f"no trained model yet under {models_uri(cfg)} (run genrecast train)")
        spec = storage.read_bytes(pointer).decode().strip()
    if not storage.exists(join(model_uri(cfg, spec), MODEL_JSON)):
        raise ConfigError(f"model {spec!r} not found (or unfinished) under {models_uri(cfg)}")
    return spec


def read_model_json(cfg: Config, model_id: str) -> dict[str, Any]:
    storage = Storage.from_config(cfg)
    return json.loads(storage.read_bytes(join(model_uri(cfg, model_id), MODEL_JSON)))


def check_audio_params(meta: dict[str, Any], audio: AudioConf, model_id: str) -> None:
    """A model only understands mels made with its own audio parameters."""
    trained = meta["audio"]
    diffs = [
        f"{k}: model {trained[k]} vs config {getattr(audio, k)}" for k in AUDIO_KEYS if trained[k] != getattr(audio, k)
    ]
    if diffs:
        raise ConfigError(f"model {model_id} was trained with other audio settings ({'; '.join(diffs)})")


def write_split(cfg: Config, model_id: str, assignment: dict[str, str], groups: dict[str, str]) -> str:
    """``split.parquet`` beside the model: one row per labelled track (``track_id``, ``split``
    train|val|test, ``group``: the unit kept on one side, :func:`genrecast.split.split_groups`),
    sorted by track_id. Written before ``model.json``; models trained before it embedded the
    split in ``model.json`` (``split.tracks``), which :func:`read_split` still reads."""
    import pyarrow as pa

    ids = sorted(assignment)
    table = pa.table(
        {
            "track_id": pa.array(ids, pa.string()),
            "split": pa.array([assignment[t] for t in ids], pa.string()),
            "group": pa.array([groups[t] for t in ids], pa.string()),
        }
    )
    uri = join(model_uri(cfg, model_id), SPLIT_FILE)
    Storage.from_config(cfg).write_parquet(uri, table)
    return uri


def read_split(cfg: Config, model_id: str, meta: dict[str, Any] | None = None) -> dict[str, str]:
    """``track_id -> train|val|test`` of a model: its ``split.parquet``, or the ``split.tracks``
    an older ``model.json`` embedded; ``{}`` for a model with neither. ``meta``: the model.json
    when the caller has read it already."""
    meta = read_model_json(cfg, model_id) if meta is None else meta
    embedded = meta.get("split", {}).get("tracks")
    if embedded is not None:
        return dict(embedded)
    storage = Storage.from_config(cfg)
    uri = join(model_uri(cfg, model_id), SPLIT_FILE)
    if not storage.exists(uri):
        return {}
    table = storage.read_parquet(uri, ["track_id", "split"])
    return dict(zip(table.column("track_id").to_pylist(), table.column("split").to_pylist(), strict=True))


def publish(cfg: Config, model_id: str, meta: dict[str, Any]) -> str:
    """Write ``model.json`` (the model is complete from here on) and move ``LATEST`` to it."""
    storage = Storage.from_config(cfg)
    storage.write_bytes(join(model_uri(cfg, model_id), MODEL_JSON), json.dumps(meta, indent=2).encode())
    storage.write_bytes(join(models_uri(cfg), LATEST), model_id.encode())
    return model_uri(cfg, model_id)


def load_keras_file(cfg: Config, model_id: str) -> Any:
    """The Keras model of ``model_id`` (no compatibility check: see :func:`load_model`)."""
    from genrecast.model import load_model as load_keras

    data = Storage.from_config(cfg).read_bytes(join(model_uri(cfg, model_id), MODEL_FILE))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, MODEL_FILE)
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            return load_keras(path)
        except Exception as exc:
            raise JobError(f"model {model_id}: cannot load {MODEL_FILE}: {exc}") from exc


def load_model(cfg: Config, model_id: str) -> tuple[Any, dict[str, Any]]:
    """(Keras model, model.json) after checking the audio parameters match the config."""
    meta = read_model_json(cfg, model_id)
    check_audio_params(meta, cfg.audio, model_id)
    return load_keras_file(cfg, model_id), meta
