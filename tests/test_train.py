"""Distributed training for real: 2 Spark barrier tasks -> MultiWorkerMirroredStrategy -> report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genrecast import commit, registry
from genrecast.config import AugmentConf
from genrecast.errors import ConfigError, JobError
from genrecast.ingest import run_ingest
from genrecast.storage import Storage
from genrecast.train import run_train

from conftest import layers_that_differ, write_config, write_labelled_catalogue


@pytest.fixture(scope="module")
def trained(tmp_path_factory, spark):
    root = tmp_path_factory.mktemp("train")
    write_labelled_catalogue(root, np.random.default_rng(0), 12, artists=4)
    cfg = write_config(
        root,
        "genres: [low, high, noise]\n"
        "ingest: {tracks_per_partition: 4, row_group_size_mb: 1}\n"
        "train: {epochs: 15, batch_size: 8, patience: 15, workers: 2}\n",
    )
    assert run_ingest(cfg, spark).tracks_ok == 36
    return cfg, run_train(cfg, spark)


def test_both_workers_ran_and_ended_with_identical_weights(trained):
    _, result = trained
    assert [w["rank"] for w in result.workers] == [0, 1]
    assert len({w["weights_sha256"] for w in result.workers}) == 1
    assert all(w["epochs_run"] == 15 for w in result.workers)


def test_the_pipeline_learns_separable_classes(trained):
    _, result = trained
    # Chance is 1/3. 8 of 9 happens (a noise track taken for high, 1 full-suite run in 5 on this
    # code): the workers' Petastorm reader threads vary the batch order, so training is not
    # bit-reproducible; a broken pipeline stays far below this bound.
    assert result.metrics["cnn_track"]["accuracy"] >= 7 / 9, result.report_text
    assert result.metrics["cnn_track"]["n"] == 9  # one artist of three tracks per genre is held out


def test_registry_and_report(trained):
    cfg, result = trained
    storage = Storage()
    assert registry.resolve_model_id(cfg, "latest") == result.model_id
    meta = registry.read_model_json(cfg, result.model_id)
    assert meta["genres"] == ["low", "high", "noise"]
    assert meta["audio"]["n_mels"] == 128 and len(meta["normalisation"]["band_mean"]) == 128
    split = registry.read_split(cfg, result.model_id, meta)
    assert set(split.values()) == {"train", "val", "test"} and len(split) == 36
    assert sum(side == "test" for side in split.values()) == result.metrics["cnn_track"]["n"] == 9
    assert meta["split"]["seed"] == 0 and len(meta["dataset"]["fingerprint"]) == 64
    for name in ("confusion.png", "baseline_confusion.png", "curves.png"):
        assert storage.read_bytes(f"{result.report_uri}/{name}")[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads(storage.read_bytes(f"{result.report_uri}/metrics.json"))
    assert np.asarray(metrics["cnn_track"]["confusion"]).sum() == 9
    assert set(metrics["cnn_track"]["per_genre"]) == {"low", "high", "noise"}
    assert 0 <= metrics["baseline_track"]["accuracy"] <= 1
    model, _ = registry.load_model(cfg, result.model_id)
    assert model.count_params() == meta["params"]


def test_validation_is_streamed_on_both_workers(trained):
    _, result = trained
    chief = result.workers[0]
    assert len(chief["history"]["val_accuracy"]) == chief["epochs_run"] == 15
    assert all(0 <= v <= 1 for v in chief["history"]["val_accuracy"])
    # The workers' Keras metrics are all-reduced: both report the same validation history.
    assert result.workers[1]["history"]["val_loss"] == pytest.approx(chief["history"]["val_loss"])


def test_augmented_training_learns_and_is_recorded(trained, spark):
    """Every augmentation stage, mixup's one-hot labels and balanced batches through the same
    distributed path: the replicas agree, the classes are still learned, the settings are kept."""
    cfg, _ = trained
    augment = {"use": ["gain", "tilt", "time_mask", "freq_mask", "pitch", "stretch", "mixup"], "balanced": True}
    cfg = cfg.model_copy(
        update={"train": cfg.train.model_copy(update={"augment": AugmentConf.model_validate(augment), "epochs": 12})}
    )
    result = run_train(cfg, spark)
    assert len({w["weights_sha256"] for w in result.workers}) == 1
    assert np.isfinite(result.workers[0]["history"]["val_loss"]).all()
    assert result.metrics["cnn_track"]["accuracy"] >= 6 / 9, result.report_text  # chance is 1/3
    meta = registry.read_model_json(cfg, result.model_id)
    assert meta["training"]["augment"]["use"] == augment["use"] and meta["training"]["augment"]["balanced"]


def test_model_refuses_other_audio_settings(trained):
    cfg, result = trained
    other = cfg.model_copy(deep=True)
    other.audio.n_mels = 64
    with pytest.raises(ConfigError, match="n_mels: model 128 vs config 64"):
        registry.load_model(other, result.model_id)


def test_unknown_model_is_a_clear_error(trained):
    cfg, _ = trained
    with pytest.raises(ConfigError, match="model 'nope' not found"):
        registry.resolve_model_id(cfg, "nope")


BACKBONE_AUDIO = "audio: {sample_rate: 16000, n_fft: 512, hop_length: 256, n_mels: 96, clip_seconds: 3.0}\n"


def train_on_backbone_profile(tmp_path, spark, seed: int, per_genre: int, seconds: float, artists: int, train: str):
    """A synthetic catalogue (3 genres) ingested with the backbone's audio profile, then trained
    with the ``train:`` section ``train``; the replicas must end identical. -> (config, result)."""
    write_labelled_catalogue(tmp_path, np.random.default_rng(seed), per_genre, seconds=seconds, artists=artists)
    cfg = write_config(tmp_path, "genres: [low, high, noise]\n" + BACKBONE_AUDIO + f"train: {{{train}}}\n")
    assert run_ingest(cfg, spark).tracks_ok == 3 * per_genre
    result = run_train(cfg, spark)
    assert len({w["weights_sha256"] for w in result.workers}) == 1
    return cfg, result


def test_backbone_head_trains_distributed_and_scores(tmp_path, spark):
    """``train.backbone: vgg-msd`` on a catalogue ingested with the backbone's audio profile: the
    same barrier + MultiWorkerMirroredStrategy path trains a head on the frozen backbone, records
    the backbone in model.json, and ``score`` uses the model like any other."""
    from genrecast import backbone
    from genrecast.dataset import scores_uri
    from genrecast.model import BACKBONE_FEATURES
    from genrecast.score import run_score

    cfg, result = train_on_backbone_profile(
        tmp_path, spark, 1, 6, 3.5, 3,
        "epochs: 6, batch_size: 8, patience: 6, workers: 2, embedding_dim: 16, backbone: vgg-msd, learning_rate: 0.01",
    )
    meta = registry.read_model_json(cfg, result.model_id)
    assert meta["backbone"]["name"] == "vgg-msd" and meta["backbone"]["source"] == "musicnn==0.1.0:MSD_vgg"
    model, _ = registry.load_model(cfg, result.model_id)
    trunk = model.get_layer("backbone")
    fresh = backbone.feature_model(backbone.build_backbone("vgg-msd"), BACKBONE_FEATURES["vgg"])
    for before, after in zip(fresh.get_weights(), trunk.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)  # frozen through distributed training
    assert meta["params"] == model.count_params()
    # Frozen features separate the synthetic classes: the held-out tracks are right.
    assert result.metrics["cnn_track"]["accuracy"] >= 0.8, result.report_text

    scored = run_score(cfg, spark, "nightly")
    assert scored.scored == 18
    files = commit.table_files(Storage(), scores_uri(cfg, result.model_id))
    embeddings = [e for f in files for e in Storage().read_parquet(f, ["embedding"]).column("embedding").to_pylist()]
    assert len(embeddings) == 18 and {len(e) for e in embeddings} == {16}


def test_pooled_head_trains_distributed_and_scores_per_track(tmp_path, spark):
    """``train.head: pooled``: the head trains on per-track mean + std of the frozen backbone's
    clip features, in the same barrier + MultiWorkerMirroredStrategy path; model.json records the
    head and ``pool_clips``, and the Predictor scores a track with the head applied to the pooled
    features of the clips training pooled (here 1 of each track's 3: the middle one).
    ``train.harmony``: each track's harmony statistics, from its whole decoded audio, are the
    head's second input in training, evaluation, scoring and the notebooks' helper alike.
    ``train.classifier: logistic``: the head converges to sklearn's logistic regression on the
    same standardised rows (the refit's: train + validation tracks), its embedding the logits."""
    from genrecast import backbone
    from genrecast.classify import classify_files
    from genrecast.dataset import mels_uri, scores_uri
    from genrecast.features import usable_samples
    from genrecast.harmony import harmony_stats
    from genrecast.model import BACKBONE_FEATURES, inference_model, pool_clip_features, pool_indices, pooled_parts
    from genrecast.notebook_helpers import predict_test_split, read_table
    from genrecast.score import Predictor, predictor_for, run_score
    from genrecast.similar import embed_audio_bytes, similar_for_audio
    from genrecast.train_worker import load_clips

    cfg, result = train_on_backbone_profile(
        tmp_path, spark, 1, 6, 6.5, 3,
        "batch_size: 8, workers: 2, embedding_dim: 16, backbone: vgg-msd, head: pooled, pool_clips: 1,"
        " refit: true, harmony: 2, classifier: logistic, logistic_c: 0.5, logistic_steps: 300",
    )
    meta = registry.read_model_json(cfg, result.model_id)
    assert meta["training"]["head"] == "pooled" and meta["training"]["pool_clips"] == 1
    assert meta["training"]["harmony"] == 2
    assert meta["training"]["classifier"] == "logistic" and meta["training"]["logistic_c"] == 0.5
    assert meta["training"]["logistic_steps"] == 300
    assert meta["embedding_dim"] == 3  # the logits
    # one full-batch fit on the train tracks, then the refit on train + validation tracks
    assert meta["training"]["epochs_run"] == meta["training"]["refit_epochs"] == 1
    model, _ = registry.load_model(cfg, result.model_id)
    fresh = backbone.feature_model(backbone.build_backbone("vgg-msd"), BACKBONE_FEATURES["vgg"])
    for before, after in zip(fresh.get_weights(), model.get_layer("backbone").get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)  # frozen through distributed training
    assert result.metrics["cnn_track"]["accuracy"] >= 0.8, result.report_text

    split = registry.read_split(cfg, result.model_id, meta)
    x, y, ids = load_clips(cfg, sorted(split), meta["genres"])
    # The workers read the train and validation tracks between them, every clip once, and sent
    # only each track's pooled clip (pool_clips 1) through the backbone.
    passes = meta["training"]["feature_pass"]
    assert sum(p["read_clips"] for p in passes) == sum(split[t] != "test" for t in ids), passes
    assert sum(p["clips"] for p in passes) == sum(side != "test" for side in split.values()), passes
    tracks = sorted(set(ids))
    clips = [x[[i for i, t in enumerate(ids) if t == track]] for track in tracks]
    assert {len(c) for c in clips} == {3} and list(pool_indices(3, 1)) == [1]
    # Each track's statistics from its audio, decoded here as ingest decodes it.
    sources = read_table(cfg, mels_uri(cfg), ["track_id", "source_uri"]).drop_duplicates("track_id")
    source = dict(zip(sources["track_id"], sources["source_uri"], strict=True))
    stats = np.stack([
        harmony_stats(usable_samples(Storage().read_bytes(source[t]), source[t], cfg.audio, cfg.ingest), 16000)
        for t in tracks
    ])
    predictor = predictor_for(cfg, result.model_id, meta["genres"])  # head, pool_clips, harmony from model.json
    assert predictor.head == "pooled" and predictor.pool_clips == 1 and predictor.harmony
    with pytest.raises(JobError, match="takes each track's harmony statistics"):
        predictor.predict_tracks(clips)
    seen: list[int] = []  # clips through the backbone
    backbone_pass = predictor._features
    predictor._features = lambda batch: (seen.append(len(batch)), backbone_pass(batch))[1]
    got = predictor.predict_tracks(clips, stats)
    assert len(got) == len(tracks) and sum(seen) == len(tracks)  # only the pooled clip of each track
    features, head = pooled_parts(model)
    picked = np.stack([pool_clip_features(features(c[1:2], training=False).numpy()) for c in clips])
    want_probs, want_emb = (o.numpy() for o in inference_model(head)([picked, stats], training=False))
    # The statistics are an input that counts: without them the head says something else.
    blind = inference_model(head)([picked, np.zeros_like(stats)], training=False)[0].numpy()
    assert np.abs(blind - want_probs).max() > 1e-2
    np.testing.assert_allclose(np.stack([p for p, _e in got]), want_probs, atol=1e-5)
    np.testing.assert_allclose(np.stack([e for _p, e in got]), want_emb, atol=1e-5)
    # The head is the penalised regression's optimum: sklearn's, fitted on the refit's rows.
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = np.concatenate([picked] + [stats] * 2, axis=1)
    labels = np.asarray([y[ids.index(t)] for t in tracks])
    fitted = np.asarray([split[t] != "test" for t in tracks])
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=10000, tol=1e-8))
    reference_probs = reference.fit(rows[fitted], labels[fitted]).predict_proba(rows)
    print("max |keras - sklearn| probability", np.abs(reference_probs - want_probs).max())
    np.testing.assert_allclose(want_probs, reference_probs, atol=0.02)  # 8e-5 seen
    # The score job reads pool_clips from model.json too: its rows are those track rows.
    assert run_score(cfg, spark, "nightly").scored == len(tracks)
    table = [Storage().read_parquet(f, ["track_id", "probabilities"]).to_pylist()
             for f in commit.table_files(Storage(), scores_uri(cfg, result.model_id))]
    scored = {r["track_id"]: r["probabilities"] for rows in table for r in rows}
    np.testing.assert_allclose(np.stack([scored[t] for t in tracks]), want_probs, atol=1e-5)
    # classify and similar --audio decode a file and compute its statistics too: the same track row.
    one = tracks[0]
    [row] = classify_files(cfg, [source[one]], model=result.model_id, threads=1)
    np.testing.assert_allclose([row["probabilities"][g] for g in meta["genres"]], want_probs[0], atol=1e-5)
    embedding = embed_audio_bytes(cfg, Storage().read_bytes(source[one]), source[one], predictor)
    np.testing.assert_allclose(embedding, want_emb[0], atol=1e-5)
    assert len(similar_for_audio(cfg, source[one], k=3, model=result.model_id)) == 3
    # With clip outputs every clip goes through the backbone; the track row is the same.
    seen.clear()
    full = predictor.predict_all(clips, harmony=stats)
    assert sum(seen) == len(ids) and [len(p) for p, _e, _tp, _te in full] == [3] * len(tracks)
    np.testing.assert_allclose(np.stack([tp for _p, _e, tp, _te in full]), want_probs, atol=1e-5)
    # pool_clips 0: every clip pooled, as the whole model does in its graph (TrackPool).
    every = Predictor(model, meta["genres"], head="pooled", harmony=2).predict_tracks(clips, stats)
    pooled = np.stack([pool_clip_features(features(c, training=False).numpy()) for c in clips])
    np.testing.assert_allclose(
        np.stack([p for p, _e in every]), inference_model(head)([pooled, stats], training=False)[0].numpy(), atol=1e-5
    )
    np.testing.assert_allclose(model([clips[0], stats[:1]], training=False).numpy()[0], every[0][0], atol=1e-5)
    # Clip-level outputs: one row per clip (each clip as a one-clip track of its track's statistics).
    clip_probs, clip_embs = predictor.predict(clips[0], np.repeat(stats[:1], len(clips[0]), axis=0))
    assert clip_probs.shape == (len(clips[0]), 3) and clip_embs.shape == (len(clips[0]), 3)
    np.testing.assert_allclose(clip_probs, full[0][0], atol=1e-5)
    with pytest.raises(JobError, match="training.harmony is 0 but the model takes harmony statistics"):
        Predictor(model, meta["genres"], head="pooled")
    with pytest.raises(JobError, match="training.head is 'clip' but the model has a track_pool layer"):
        Predictor(model, meta["genres"], head="clip")
    with pytest.raises(JobError, match="training.pool_clips is 2 for a 'clip' head"):
        Predictor(registry.load_model(cfg, result.model_id)[0], meta["genres"], head="clip", pool_clips=2)
    # The notebooks' test-split helper scores as the train job's evaluation did.
    preds = predict_test_split(cfg, result.model_id)
    assert float(preds.tracks["correct"].mean()) == pytest.approx(result.metrics["cnn_track"]["accuracy"])


def test_finetune_trains_the_upper_backbone_layers_distributed(tmp_path, spark):
    """``train.finetune: 1`` with ``refit``: after the pooled head, the backbone's last conv block
    trains with it in the same barrier + MultiWorkerMirroredStrategy path, validation keeps it
    (the head is held near its initial weights - 1 epoch at learning rate 1e-6 - so fine-tuning
    at 0.01 beats it), and the refit retrains head and block on train + validation. The replicas
    end identical, the layers below the cut and every batch-norm keep the checkpoint's weights,
    and model.json records the epochs kept."""
    from genrecast import backbone
    from genrecast.model import BACKBONE_FEATURES

    cfg, result = train_on_backbone_profile(
        tmp_path, spark, 2, 6, 6.5, 6,
        "epochs: 1, learning_rate: 0.000001, batch_size: 8, workers: 2, embedding_dim: 8,"
        " backbone: vgg-msd, head: pooled, pool_clips: 2, refit: true, finetune: 1, finetune_epochs: 4,"
        " finetune_learning_rate: 0.01, patience: 4, split: {val: 0.4}",
    )
    history = result.workers[0]["history"]
    kept = history["finetune_val_accuracy"].index(max(history["finetune_val_accuracy"])) + 1
    assert max(history["finetune_val_accuracy"]) > max(history["val_accuracy"]), history
    meta = registry.read_model_json(cfg, result.model_id)
    assert meta["training"]["finetune"] == {"depth": 1, "epochs": kept, "learning_rate": 0.01}
    assert meta["training"]["refit_epochs"] == 1
    # 2 of each train and validation track's 3 clips went through the backbone's lower part, once.
    split = registry.read_split(cfg, result.model_id, meta)
    passes = meta["training"]["feature_pass"]
    assert sum(p["clips"] for p in passes) == 2 * sum(side != "test" for side in split.values()), passes
    model, _ = registry.load_model(cfg, result.model_id)
    fresh = backbone.feature_model(backbone.build_backbone("vgg-msd"), BACKBONE_FEATURES["vgg"])
    assert layers_that_differ(fresh, model.get_layer("backbone")) == {"conv5"}
    assert result.metrics["cnn_track"]["n"] == sum(side == "test" for side in split.values())
