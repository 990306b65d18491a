"""S3 for real: SeaweedFS on 127.0.0.1, catalogue uploaded with boto3, ingest s3:// -> s3://."""

from __future__ import annotations

import collections

import pandas as pd
import pytest

from genrecast.config import load_config
from genrecast.dataset import make_mel_reader, manifest_uri, mels_uri, rejects_uri
from genrecast.ingest import run_ingest
from genrecast.manifest import read_manifest
from genrecast.storage import Storage

from conftest import REPO, fetches, tone, write_audio
from s3server import CREDENTIALS, S3_PORT, SeaweedS3

pytestmark = pytest.mark.s3
BUCKET = "genrecast-local"  # conf/s3-local.yaml's


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    for key, value in CREDENTIALS.items():  # the AWS chain's environment source, as in production
        mp.setenv(key, value)
    server = SeaweedS3(tmp_path_factory.mktemp("weed"), s3_port=S3_PORT).start()
    server.client().create_bucket(Bucket=BUCKET)
    yield server
    server.stop()
    mp.undo()


@pytest.fixture(scope="module")
def s3_config(s3, tmp_path_factory):
    local = tmp_path_factory.mktemp("s3cat")
    files = {
        "rock/a.wav": tone(4, freq=220),
        "rock/b.mp3": tone(7, freq=330),
        "jazz/c.ogg": tone(4, freq=440),
        "jazz/d.flac": tone(4, freq=550),
    }
    client = s3.client()
    for name, y in files.items():
        path = write_audio(local / name, y)
        client.upload_file(str(path), BUCKET, f"catalogue/audio/{name}")
    client.put_object(Bucket=BUCKET, Key="catalogue/audio/jazz/broken.mp3", Body=b"not an mp3 at all" * 10)
    client.put_object(
        Bucket=BUCKET,
        Key="catalogue/labels.csv",
        Body=b"track_id,genre\nrock/a,rock\nrock/b,rock\njazz/c,jazz\njazz/d,jazz\n",
    )
    # The shipped config, as a user runs it: its server address is SeaweedS3's.
    cfg = load_config(REPO / "conf/s3-local.yaml", environ={"GENRECAST__INGEST__TRACKS_PER_PARTITION": "2"})
    assert cfg.storage.s3.endpoint_url == s3.endpoint_url
    assert cfg.catalogue.audio_uri == f"s3://{BUCKET}/catalogue/audio"
    return cfg


def test_ingest_round_trip_through_s3(s3_config, spark):
    cfg = s3_config
    summary = run_ingest(cfg, spark)
    assert (summary.tracks_ok, summary.clips, dict(summary.rejected)) == (4, 9, {"ingest": 1})
    storage = Storage.from_config(cfg)
    keys = [u for u, _ in storage.list_files(mels_uri(cfg))]
    assert any(k.endswith("/_common_metadata") for k in keys)
    assert not [k for k in keys if "/_tmp/" in k or k.endswith("_commit.json")]

    counts = collections.Counter()
    with make_mel_reader(cfg, num_epochs=1, workers_count=1) as reader:
        for row in reader:
            assert row.mel.shape == (128, 130)
            assert row.source_uri.startswith(f"s3://{BUCKET}/catalogue/audio/")
            counts[(row.track_id, row.genre)] += 1
    assert dict(counts) == {("rock/a", "rock"): 2, ("rock/b", "rock"): 3, ("jazz/c", "jazz"): 2, ("jazz/d", "jazz"): 2}

    rejects = pd.read_parquet(rejects_uri(cfg) + "/", storage_options=storage.storage_options(rejects_uri(cfg)))
    assert list(rejects.source_uri) == [f"s3://{BUCKET}/catalogue/audio/jazz/broken.mp3"]


def test_incremental_rerun_on_s3_adds_nothing(s3_config, spark):
    with fetches(s3_config.catalogue.audio_uri) as got:
        again = run_ingest(s3_config, spark)
    assert (again.tracks_ok, again.skipped_unchanged, again.skipped_rejected) == (0, 4, 1)
    # The listing's ETags told it nothing changed: no audio object was read.
    assert got == [] and again.fetched == 0
    manifest = read_manifest(Storage.from_config(s3_config), manifest_uri(s3_config))
    assert len(manifest) == 5 and all(e.version.startswith("etag:") for e in manifest.values())


def test_credentials_never_reach_logs_or_files(s3_config, spark, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    run_ingest(s3_config, spark, full=True)
    storage = Storage.from_config(s3_config)
    secret = CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
    assert secret not in caplog.text
    for uri, size in storage.list_files(s3_config.storage.root):
        if size < 5_000_000:
            assert secret.encode() not in storage.read_bytes(uri), uri
