"""Where the tables live under ``storage.root`` (DESIGN.md layout), and opening the mel dataset."""

from __future__ import annotations

from typing import Any

from genrecast.config import Config
from genrecast.storage import Storage, join, petastorm_url


def mels_uri(cfg: Config) -> str:
    return join(cfg.storage.root, "datasets", "mels")


def rejects_uri(cfg: Config) -> str:
    return join(cfg.storage.root, "rejects")


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
