import subprocess
import sys

import pytest

from genrecast.config import DEFAULT_GENRES, load_config
from genrecast.errors import ConfigError

from conftest import REPO


def test_local_yaml_loads_with_contract_defaults(monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(REPO / "conf" / "local.yaml", environ={})
    assert cfg.spark.master == "local[2]"
    assert cfg.storage.root == str(REPO / "data" / "genrecast")
    assert cfg.catalogue.audio_uri == str(REPO / "data" / "catalogue" / "audio")
    assert (cfg.audio.sample_rate, cfg.audio.n_fft, cfg.audio.hop_length, cfg.audio.n_mels) == (22050, 2048, 512, 128)
    assert cfg.audio.clip_frames == 130
    assert cfg.genres == DEFAULT_GENRES


def test_backbone_yaml_is_the_local_default_with_the_backbone_profile(monkeypatch):
    """conf/backbone.yaml: the pooled musicnn head (with harmony statistics, a logistic regression)
    on local folders, its audio fitting the backbone."""
    monkeypatch.chdir(REPO)
    local = load_config(REPO / "conf" / "local.yaml", environ={})
    cfg = load_config(REPO / "conf" / "backbone.yaml", environ={})  # validation checks the profile
    train = (cfg.train.backbone, cfg.train.head, cfg.train.pool_clips, cfg.train.refit, cfg.train.harmony)
    assert train == ("musicnn-msd", "pooled", 3, True, 48)
    assert (cfg.train.classifier, cfg.train.logistic_c) == ("logistic", 0.1)
    assert cfg.storage.root == str(REPO / "data" / "genrecast-backbone") != local.storage.root
    assert cfg.catalogue == local.catalogue and cfg.genres == local.genres
    differ = {"storage", "audio", "train"}
    assert cfg.model_dump(exclude=differ) == local.model_dump(exclude=differ)
    ours = {"backbone", "head", "pool_clips", "refit", "harmony", "classifier", "logistic_c"}
    assert cfg.train.model_dump(exclude=ours) == local.train.model_dump(exclude=ours)


def test_env_overrides_parse_yaml_scalars(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("train: {epochs: 3}\n")
    env = {
        "GENRECAST__TRAIN__EPOCHS": "7",
        "GENRECAST__STORAGE__S3__ENDPOINT_URL": "http://127.0.0.1:8333",
        "GENRECAST__GENRES": "[rap, brazilian funk]",
        "OTHER": "x",
    }
    cfg = load_config(conf, environ=env)
    assert cfg.train.epochs == 7
    assert cfg.storage.s3.endpoint_url == "http://127.0.0.1:8333"
    assert cfg.genres == ["rap", "brazilian funk"]


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("audio: {n_mel: 64}\n", {}, "unknown key 'audio.n_mel'"),
        ("bogus: 1\n", {}, "unknown key 'bogus'"),
        ("audio: {sample_rate: fast}\n", {}, "key 'audio.sample_rate'"),
        ("audio: {hop_length: -5}\n", {}, "key 'audio.hop_length'"),
        ("genres: [rock, Rock]\n", {}, "key 'genres'"),
        ("train: {split: {by: album}}\n", {}, "key 'train.split.by'"),
        ("", {"GENRECAST__TRAIN__EPOCS": "3"}, "unknown key 'train.epocs'"),
        ("audio: [1, 2\n", {}, "not valid YAML"),
        ("- a\n- b\n", {}, "top level must be a mapping"),
        ("storage: {root: 'ftp://x/y'}\n", {}, "unsupported URI scheme"),
        ("train: {head: pooled}\n", {}, "key 'train.head': pooled needs a pretrained train.backbone"),
        ("train: {head: track}\n", {}, "key 'train.head'"),
        ("train: {pool_clips: 3}\n", {}, "key 'train.pool_clips': only used with train.head pooled"),
        ("train: {pool_clips: -1}\n", {}, "key 'train.pool_clips'"),
        ("train: {refit: true}\n", {}, "key 'train.refit': only built for train.head pooled"),
        (
            "audio: {sample_rate: 16000, n_fft: 512, hop_length: 256, n_mels: 96}\n"
            "train: {backbone: vgg-msd, head: pooled, refit: true, split: {val: 0}}\n",
            {},
            "key 'train.refit': needs validation tracks (train.split.val > 0)",
        ),
        (
            "audio: {sample_rate: 16000, n_fft: 512, hop_length: 256, n_mels: 96}\n"
            "train: {backbone: vgg-msd, head: pooled, augment: {use: [gain]}}\n",
            {},
            "key 'train.augment': not applied with train.head pooled",
        ),
        ("train: {finetune: 1}\n", {}, "key 'train.finetune': only built for train.head pooled with train.pool_clips"),
        (
            "audio: {sample_rate: 16000, n_fft: 512, hop_length: 256, n_mels: 96}\n"
            "train: {backbone: vgg-msd, head: pooled, finetune: 1}\n",
            {},
            "key 'train.finetune': only built for train.head pooled with train.pool_clips > 0",
        ),
        ("train: {finetune: 3}\n", {}, "key 'train.finetune'"),
        ("train: {harmony: 12}\n", {}, "key 'train.harmony': only built for train.head pooled"),
        ("train: {harmony: -1}\n", {}, "key 'train.harmony'"),
        (
            "audio: {sample_rate: 16000, n_fft: 512, hop_length: 256, n_mels: 96}\n"
            "train: {backbone: vgg-msd, head: pooled, pool_clips: 3, finetune: 1, harmony: 12}\n",
            {},
            "key 'train.harmony': not built together with train.finetune",
        ),
        ("train: {classifier: logistic}\n", {}, "key 'train.classifier': logistic is only built for train.head pooled"),
        ("train: {classifier: ridge}\n", {}, "key 'train.classifier'"),
        ("train: {logistic_c: 0}\n", {}, "key 'train.logistic_c'"),
        (
            "audio: {sample_rate: 16000, n_fft: 512, hop_length: 256, n_mels: 96}\n"
            "train: {backbone: vgg-msd, head: pooled, pool_clips: 3, finetune: 1, classifier: logistic}\n",
            {},
            "key 'train.classifier': logistic is not built together with train.finetune",
        ),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path, text, env, message):
    conf = tmp_path / "c.yaml"
    conf.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(conf, environ=env)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml", environ={})


@pytest.mark.parametrize(
    ("text", "needle"), [(None, "config file not found"), ("audio: {n_mel: 1}\n", "unknown key 'audio.n_mel'")]
)
def test_cli_exits_2_with_one_line(tmp_path, text, needle):
    conf = tmp_path / "c.yaml"
    if text is not None:
        conf.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "genrecast", "ingest", "--conf", str(conf)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_bad_usage_exits_2():
    proc = subprocess.run(
        [sys.executable, "-m", "genrecast", "ingest", "--no-such-flag"], capture_output=True, text=True
    )
    assert proc.returncode == 2
