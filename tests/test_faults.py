"""Fault injection: ingest -> score against SeaweedFS through a proxy that resets, stalls or
throttles (503 SlowDown) every Nth connection (tests/faultproxy.py) gives the same tables as the
same run without it.

Every S3 call of the run goes through the proxy: the driver's boto3 client, the executors' (they
get the config, so the proxy's endpoint), and s3fs inside petastorm's metadata step. The client
read timeout is 2 s here (a loaded 2-core machine can answer a plain request in over 1 s),
so a stalled answer costs about two seconds.
"""
from __future__ import annotations

import numpy as np
import pytest
from botocore.exceptions import ConnectionClosedError

from genrecast import commit, registry
from genrecast.config import load_config
from genrecast.dataset import make_mel_reader, mels_uri, rejects_uri, scores_uri
from genrecast.ingest import run_ingest
from genrecast.model import build_model
from genrecast.score import run_score
from genrecast.storage import Storage, join

from conftest import synthetic_track, write_audio
from faultproxy import FaultProxy
from s3server import CREDENTIALS, SeaweedS3

pytestmark = pytest.mark.s3
BUCKET = "genrecast-faults"
GENRES = ["low", "high", "noise"]
MODEL_ID = "20260101T000000Z-faults"
EVERY = 3  # every 3rd connection of each client library is broken: reset, stall, 503 SlowDown in turn


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    for key, value in CREDENTIALS.items():
        mp.setenv(key, value)
    server = SeaweedS3(tmp_path_factory.mktemp("weed")).start()
    server.client().create_bucket(Bucket=BUCKET)
    yield server
    server.stop()
    mp.undo()


def _config(folder, root: str, endpoint: str):
    conf = folder / f"{root}.yaml"
    conf.write_text(
        f"storage: {{root: s3://{BUCKET}/{root}, s3: {{endpoint_url: '{endpoint}', region: us-east-1, "
        "read_timeout_s: 2.0, connect_timeout_s: 2.0}}\n"
        f"catalogue: {{audio_uri: s3://{BUCKET}/catalogue/audio, labels_uri: s3://{BUCKET}/catalogue/labels.csv}}\n"
        f"genres: {GENRES}\n"
        "ingest: {tracks_per_partition: 1}\n"
    )
    return load_config(conf)


def _publish_model(cfg, model_file) -> None:
    """The same (untrained, seeded) model under ``cfg``'s root: scores need a model, not a good one."""
    storage = Storage.from_config(cfg)
    storage.write_bytes(join(registry.model_uri(cfg, MODEL_ID), registry.MODEL_FILE), model_file.read_bytes())
    registry.publish(cfg, MODEL_ID, {"model_id": MODEL_ID, "genres": GENRES, "audio": cfg.audio.model_dump()})


@pytest.fixture(scope="module")
def setup(s3, tmp_path_factory):
    """(clean config, faulty config, proxy) over one catalogue of 7 tracks and a broken file."""
    folder = tmp_path_factory.mktemp("faults")
    rng = np.random.default_rng(7)
    client = s3.client()
    labels = ["track_id,genre"]
    for i, kind in enumerate(GENRES * 2 + ["low"]):
        name = f"{kind}/{kind}{i}.{'mp3' if i == 6 else 'wav'}"
        path = write_audio(folder / "audio" / name, synthetic_track(kind, rng, seconds=3.5))
        client.upload_file(str(path), BUCKET, f"catalogue/audio/{name}")
        labels.append(f"{kind}/{kind}{i},{kind}")
    client.put_object(Bucket=BUCKET, Key="catalogue/audio/bad/broken.mp3", Body=b"not audio\n" * 40)
    client.put_object(Bucket=BUCKET, Key="catalogue/labels.csv", Body=("\n".join(labels) + "\n").encode())

    import tf_keras

    tf_keras.utils.set_random_seed(0)
    clean = _config(folder, "clean", s3.endpoint_url)
    model = build_model(
        clean.audio.n_mels,
        clean.audio.clip_frames,
        len(GENRES),
        np.full(clean.audio.n_mels, -40.0),
        np.full(clean.audio.n_mels, 20.0),
        embedding_dim=16,
        widths=(4, 8, 8, 8),
    )
    model.save(folder / "model.keras")
    proxy = FaultProxy(s3.port, every=EVERY).start()
    faulty = _config(folder, "faulty", proxy.endpoint_url)
    _publish_model(clean, folder / "model.keras")
    _publish_model(faulty, folder / "model.keras")
    yield clean, faulty, proxy
    proxy.stop()


def _table_rows(storage: Storage, uri: str, columns: list[str]) -> list[tuple]:
    rows = []
    for f in commit.table_files(storage, uri):
        table = storage.read_parquet(f, columns=columns)
        rows += [tuple(r[c] for c in columns) for r in table.to_pylist()]
    return sorted(rows, key=repr)


def _outputs(cfg, direct: Storage) -> dict[str, list[tuple]]:
    """The run's tables as plain rows, read without the proxy; timestamps and run ids left out."""
    score_cols = [
        "track_id",
        "model_id",
        "genre",
        "confidence",
        "probabilities",
        "embedding",
        "n_clips",
        "audio_sha256",
    ]
    mel_cols = ["track_id", "clip_index", "genre", "mel", "source_uri", "audio_sha256"]
    return {
        "mels": _table_rows(direct, mels_uri(cfg), mel_cols),
        "scores": _table_rows(direct, scores_uri(cfg, MODEL_ID), score_cols),
        "rejects": _table_rows(direct, rejects_uri(cfg), ["source_uri", "stage", "reason"]),
    }


def test_ingest_and_score_through_a_faulty_network_match_a_clean_run(setup, spark):
    clean, faulty, proxy = setup
    direct = Storage.from_config(clean)

    ingested, scored = run_ingest(clean, spark), run_score(clean, spark, "nightly")
    assert (ingested.tracks_ok, sum(ingested.rejected.values()), scored.scored) == (7, 1, 7)
    assert proxy.faults == []  # nothing went through the proxy yet

    ingested_f, scored_f = run_ingest(faulty, spark), run_score(faulty, spark, "nightly")
    assert (ingested_f.tracks_ok, ingested_f.clips) == (ingested.tracks_ok, ingested.clips)
    assert scored_f.scored == scored.scored

    # Faults really happened, of both kinds, to both client libraries.
    kinds = {(f.mode, f.kind) for f in proxy.faults}
    walls = ", ".join(f"{s.wall_seconds:.1f}" for s in (ingested, scored, ingested_f, scored_f))
    print(f"\nwall s (clean ingest, score, faulty ingest, score): {walls}")
    print(f"\nproxy: connections {proxy.connections}, faults {len(proxy.faults)}:")
    for f in proxy.faults:
        print(f"  {f.mode:8} {f.kind:11} {f.request}")
    assert {("reset", "boto3"), ("stall", "boto3"), ("slowdown", "boto3")} <= kinds, kinds
    # ... including requests only executors make (audio fetches, staged part files).
    assert any("/catalogue/audio/" in f.request or "/_tmp/" in f.request for f in proxy.faults)

    clean_out, faulty_out = _outputs(clean, direct), _outputs(faulty, direct)
    for table in ("mels", "scores", "rejects"):
        assert len(faulty_out[table]) == len(clean_out[table]) > 0, table
        assert faulty_out[table] == clean_out[table], table
    assert [r[:2] for r in faulty_out["mels"]] == sorted({r[:2] for r in faulty_out["mels"]})  # no duplicates
    # Nothing half-committed is left, and the Petastorm metadata matches the committed files.
    leftovers = [u for u, _ in direct.list_files(f"s3://{BUCKET}/faulty") if "/_tmp/" in u or "_commit" in u]
    assert leftovers == []
    faulty_direct = faulty.model_copy(deep=True)
    faulty_direct.storage.s3.endpoint_url = clean.storage.s3.endpoint_url
    with make_mel_reader(faulty_direct, num_epochs=1, workers_count=1, schema_fields=["track_id"]) as reader:
        assert sum(1 for _ in reader) == len(faulty_out["mels"])
    # Petastorm reads through s3fs (aiobotocore), with its own retry loop under our bound: read the
    # dataset through the proxy until both kinds of fault have hit that client too (bounded).
    for _ in range(12):
        with make_mel_reader(faulty, num_epochs=1, workers_count=1, schema_fields=["track_id"]) as reader:
            assert sum(1 for _ in reader) == len(faulty_out["mels"])
        if {("reset", "aiobotocore"), ("stall", "aiobotocore")} <= {(f.mode, f.kind) for f in proxy.faults}:
            break
    else:
        raise AssertionError(f"s3fs saw no reset and stall: {proxy.connections}, {proxy.faults}")


def test_retry_log_lines_name_the_error_type_and_uri_only(setup, caplog):
    """After the faulty run above: a retried call's warning holds no credential and no endpoint."""
    _clean, faulty, proxy = setup
    import logging

    caplog.set_level(logging.WARNING, logger="genrecast.storage")
    storage = Storage.from_config(faulty)
    before = len(proxy.faults)
    for _ in range(2 * EVERY):  # each call a fresh client, so a fresh connection
        storage._clients.clear()
        assert storage.exists(f"s3://{BUCKET}/catalogue/labels.csv")
    assert len(proxy.faults) > before
    assert "retrying" in caplog.text
    for secret in (CREDENTIALS["AWS_SECRET_ACCESS_KEY"], CREDENTIALS["AWS_ACCESS_KEY_ID"], str(proxy.port)):
        assert secret not in caplog.text


def test_a_store_that_stays_down_fails_the_job_after_the_bound(s3, setup, spark, tmp_path):
    """Every connection reset: the first storage call gives up after ``retry_attempts`` tries
    with the error's type, and the job has written nothing."""
    clean, _faulty, _proxy = setup
    direct = Storage.from_config(clean)
    with FaultProxy(s3.port, every=1, modes=("reset",)) as down:
        cfg = _config(tmp_path, "down", down.endpoint_url)
        cfg.storage.s3.retry_attempts = 3
        with pytest.raises(ConnectionClosedError):
            run_ingest(cfg, spark)
    assert down.connections == {"boto3": 3} and len(down.faults) == 3
    assert list(direct.list_files(f"s3://{BUCKET}/down")) == []
