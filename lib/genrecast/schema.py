"""Table schemas (DESIGN.md contracts): the Petastorm mel dataset and the rejects table.

Pure data model: no Spark session, no TensorFlow. The mel field's shape comes from the audio
configuration, so the Unischema is built from it rather than fixed at import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
from petastorm.codecs import NdarrayCodec, ScalarCodec
from petastorm.unischema import Unischema, UnischemaField
from pyspark.sql.types import IntegerType, StringType

from genrecast.config import AudioConf

MEL_COLUMNS = ("track_id", "clip_index", "genre", "mel", "source_uri", "audio_sha256")


def mel_schema(audio: AudioConf) -> Unischema:
    """One row per clip; ``mel`` is float32 ``(n_mels, clip_frames)`` in dB."""
    return Unischema(
        "MelSchema",
        [
            UnischemaField("track_id", np.str_, (), ScalarCodec(StringType()), False),
            UnischemaField("clip_index", np.int32, (), ScalarCodec(IntegerType()), False),
            UnischemaField("genre", np.str_, (), ScalarCodec(StringType()), True),
            UnischemaField("mel", np.float32, (audio.n_mels, audio.clip_frames), NdarrayCodec(), False),
            UnischemaField("source_uri", np.str_, (), ScalarCodec(StringType()), False),
            UnischemaField("audio_sha256", np.str_, (), ScalarCodec(StringType()), False),
        ],
    )


MEL_ARROW_SCHEMA = pa.schema(
    [
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("clip_index", pa.int32(), nullable=False),
        pa.field("genre", pa.string(), nullable=True),
        pa.field("mel", pa.binary(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("audio_sha256", pa.string(), nullable=False),
    ]
)


def mel_rows_table(
    schema: Unischema,
    track_ids: Sequence[str],
    clip_indices: Sequence[int],
    genres: Sequence[str | None],
    mels: Sequence[np.ndarray],
    source_uris: Sequence[str],
    sha256s: Sequence[str],
) -> pa.Table:
    """Encode clip rows with the Unischema's codecs into an Arrow table (the Parquet layout
    petastorm's ``make_reader`` decodes)."""
    field = schema.fields["mel"]
    encoded = [bytes(field.codec.encode(field, m)) for m in mels]
    return pa.table(
        [
            pa.array(track_ids, pa.string()),
            pa.array(clip_indices, pa.int32()),
            pa.array(genres, pa.string()),
            pa.array(encoded, pa.binary()),
            pa.array(source_uris, pa.string()),
            pa.array(sha256s, pa.string()),
        ],
        schema=MEL_ARROW_SCHEMA,
    )


# Rejects: the contract columns, plus audio_sha256 (null where the bytes were never read) so
# that an unchanged bad file is not retried and re-reported on every incremental run.
REJECTS_ARROW_SCHEMA = pa.schema(
    [
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("audio_sha256", pa.string(), nullable=True),
        # genrecast.features.features_key of a decode reject (null for listing / labels rows):
        # a reject made under another key is retried.
        pa.field("features_key", pa.string(), nullable=True),
    ]
)


def rejects_table(rows: Sequence[dict]) -> pa.Table:
    """Rows are dicts with the rejects columns; ``at`` defaults to now (UTC)."""
    now = datetime.now(UTC)
    defaults = {"at": now, "audio_sha256": None, "features_key": None}
    return pa.Table.from_pylist([{**defaults, **row} for row in rows], schema=REJECTS_ARROW_SCHEMA)
