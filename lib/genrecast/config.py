"""Configuration: one YAML file plus ``GENRECAST__SECTION__KEY=value`` environment overrides.

Everything is validated at start-up; an unknown key, a wrong type or a missing file raises
:class:`~genrecast.errors.ConfigError` with one line that names the key (or file).
Credentials are never configuration: S3 access uses the boto3 / AWS credential chain only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from genrecast.errors import ConfigError
from genrecast.storage import CONNECT_TIMEOUT_S, READ_TIMEOUT_S, RETRY_ATTEMPTS

ENV_PREFIX = "GENRECAST__"
DEFAULT_GENRES = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SparkConf(_Section):
    master: str = "local[2]"
    app_name: str = "genrecast"
    conf: dict[str, str] = Field(default_factory=dict)


class S3Conf(_Section):
    endpoint_url: str | None = None
    region: str | None = None
    # Transient faults (resets, timeouts, 5xx, throttling) are retried this many times in all
    # per storage call, with exponential backoff; then the call fails (genrecast.storage).
    retry_attempts: int = Field(RETRY_ATTEMPTS, ge=1, le=20)
    connect_timeout_s: float = Field(CONNECT_TIMEOUT_S, gt=0)
    read_timeout_s: float = Field(READ_TIMEOUT_S, gt=0)  # a stalled answer is abandoned and retried


def _uri(value: str | None) -> str | None:
    # Relative local paths resolve against the working directory once, here, so that
    # Spark executors (which may run elsewhere) see absolute paths.
    from genrecast.errors import InvalidIdentifier
    from genrecast.storage import normalize_uri

    if value is None:
        return None
    try:
        return normalize_uri(value)
    except InvalidIdentifier as exc:
        raise ValueError(str(exc)) from None


class LeaseConf(_Section):
    """One writer per table (genrecast.lease): how long a lease lives without a heartbeat, and how
    long a second writer waits for it before exiting 2."""

    ttl_seconds: float = Field(300.0, ge=1)  # renewed every third of this; > clock skew between hosts
    wait_seconds: float = Field(60.0, ge=0)
    poll_seconds: float = Field(1.0, gt=0)


class StorageConf(_Section):
    root: str = "data/genrecast"
    s3: S3Conf = Field(default_factory=S3Conf)
    lease: LeaseConf = Field(default_factory=LeaseConf)

    _root = field_validator("root")(_uri)


class CatalogueConf(_Section):
    audio_uri: str = "data/catalogue/audio"
    labels_uri: str | None = "data/catalogue/labels.csv"
    # ingest / score drop the rows of tracks gone from the listing, but stop (exit 2) when that
    # would be more than this share of a table's tracks, unless --allow-mass-delete: an empty or
    # wrong listing must never wipe a table.
    max_delete_share: float = Field(0.05, ge=0, le=1)

    _uris = field_validator("audio_uri", "labels_uri")(_uri)


class AudioConf(_Section):
    sample_rate: int = Field(22050, gt=0)
    n_fft: int = Field(2048, gt=0)
    hop_length: int = Field(512, gt=0)
    n_mels: int = Field(128, gt=0)
    clip_seconds: float = Field(3.0, gt=0)

    @property
    def clip_frames(self) -> int:
        """Mel frames in one clip: 130 for 3 s at 22 050 Hz, hop 512 (centred STFT)."""
        return 1 + int(round(self.clip_seconds * self.sample_rate)) // self.hop_length


class IngestConf(_Section):
    extensions: list[str] = Field(default_factory=lambda: ["wav", "mp3", "ogg", "flac", "opus", "m4a"])
    tracks_per_partition: int = Field(16, gt=0)
    max_seconds: float = Field(1800.0, gt=0)
    silence_peak_dbfs: float = -60.0
    silence_rms_dbfs: float = -70.0  # RMS around the mean: a constant/DC signal is silence too
    row_group_size_mb: int = Field(8, gt=0)


class SplitConf(_Section):
    by: Literal["artist_or_track", "track"] = "artist_or_track"
    test: float = Field(0.2, gt=0, lt=1)
    val: float = Field(0.15, ge=0, lt=1)  # of the remaining training groups, for early stopping
    seed: int = 0


class AugmentConf(_Section):
    """``train.augment``: training-time augmentation (:mod:`genrecast.augment`); all off by default."""

    use: list[str] = Field(default_factory=list)  # any of genrecast.augment.AUGMENTATIONS
    balanced: bool = False  # class-balanced batches (rejection resampling)
    gain_db: float = Field(6.0, ge=0)
    tilt_db: float = Field(6.0, ge=0)  # at the top and bottom band, opposite signs
    mask_frames: int = Field(24, ge=0)
    mask_bins: int = Field(12, ge=0)
    pitch_bins: int = Field(2, ge=0)
    stretch: float = Field(0.1, ge=0, lt=1)
    mixup_alpha: float = Field(0.2, gt=0)

    @field_validator("use")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        from genrecast.augment import AUGMENTATIONS

        unknown = [v for v in value if v not in AUGMENTATIONS]
        if unknown:
            raise ValueError(f"unknown augmentation {unknown[0]!r}: choose from {', '.join(AUGMENTATIONS)}")
        return value


class TrainConf(_Section):
    workers: int = Field(2, gt=0)
    epochs: int = Field(30, gt=0)
    batch_size: int = Field(64, gt=0)  # global: split across workers
    learning_rate: float = Field(1e-3, gt=0)
    patience: int = Field(5, ge=1)  # epochs without val_accuracy improvement before stopping
    embedding_dim: int = Field(128, gt=0)
    # "scratch": the genre CNN; a pretrained backbone name (genrecast.backbone.BACKBONES): a
    # head trained on its frozen features (the audio section must then fit its profile).
    backbone: str = "scratch"
    # Backbone models only. "clip": the head classifies each clip, a track is the mean of its
    # clips; "pooled": the head classifies a track from the mean + std of its clips' frozen
    # backbone features (genrecast.model.build_pooled_model).
    head: Literal["clip", "pooled"] = "clip"
    # Pooled head only: pool at most this many clips per track, evenly spread
    # (genrecast.model.pool_indices), in training and scoring alike; 0 = every clip. The
    # backbone's forward pass is the scoring cost, so this bounds a track's cost whatever its length.
    pool_clips: int = Field(0, ge=0)
    # Pooled head only: after early stopping on validation, train a fresh head on the training and
    # validation tracks together for the best epoch count (validation picks the epochs, then
    # its tracks train too; the head's epochs cost ~0.3 s on rows already computed).
    refit: bool = False
    # Pooled head only: after the head has trained on frozen features, train the backbone's upper
    # layers with it (genrecast.model.FINETUNE_CUTS: 1 = musicnn's back-end dense layer, 2 = its
    # mid end too; batch-norms stay frozen) at finetune_learning_rate, for up to finetune_epochs,
    # early-stopped on validation, kept only where validation beats the head alone; 0 = frozen.
    finetune: int = Field(0, ge=0, le=2)
    finetune_learning_rate: float = Field(1e-4, gt=0)
    finetune_epochs: int = Field(10, gt=0)
    # Pooled head only: each track's harmony statistics (genrecast.harmony, 53 key-invariant
    # numbers from the chroma of the whole decoded track) go into the head beside its pooled
    # clip features, repeated this many times - the head standardises every column, so the
    # repetition is the block's weight against the backbone's (1906 for musicnn-msd); 0 = off.
    # Train, score, classify and similar --audio then decode each track's audio for it.
    harmony: int = Field(0, ge=0, le=64)
    # Pooled head only. "mlp": batch-norm, dropout, the dense embedding_dim ReLU embedding,
    # softmax; early-stopped on validation. "logistic": a multinomial logistic regression on the
    # standardised row (L2 penalty with sklearn's C = logistic_c), fitted to convergence in
    # logistic_steps full-batch steps (each a collective between the workers: ~17 ms); its
    # embedding is its n_genres logits.
    classifier: Literal["mlp", "logistic"] = "mlp"
    logistic_c: float = Field(1.0, gt=0)
    logistic_steps: int = Field(2000, gt=0)
    augment: AugmentConf = Field(default_factory=AugmentConf)
    split: SplitConf = Field(default_factory=SplitConf)

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        from genrecast.backbone import BACKBONES  # lazy: backbone imports this module

        if value != "scratch" and value not in BACKBONES:
            raise ValueError(f"unknown backbone {value!r}: choose scratch, {', '.join(BACKBONES)}")
        return value


class DemoConf(_Section):
    """`genrecast demo-catalogue`: rendered MIDI written into the configured catalogue."""

    tracks_per_genre: int = Field(20, gt=0)
    seconds: float = Field(30.0, gt=0, le=600)
    seed: int = 0
    cache_dir: str | None = "data/cache/demo"  # local folder of rendered audio (None: no cache)
    workers: int = Field(2, gt=0)  # renders in parallel (external fluidsynth/mma processes)

    @field_validator("cache_dir")
    @classmethod
    def _local_dir(cls, value: str | None) -> str | None:
        if value is None:
            return None
        import os

        return os.path.abspath(os.path.expanduser(value))


class SpotifyConf(_Section):
    """`labels spotify`. Credentials: SPOTIPY_CLIENT_ID / SPOTIPY_CLIENT_SECRET env vars only."""

    api_prefix: str = "https://api.spotify.com/v1/"
    auth_url: str = "https://accounts.spotify.com/api/token"
    market: str | None = None
    page_size: int = Field(50, ge=1, le=50)
    timeout_s: float = Field(10.0, gt=0)
    retries: int = Field(5, ge=0)
    backoff_factor: float = Field(0.5, ge=0)
    max_retry_after_s: float = Field(120.0, ge=0)
    catalogue_index_uri: str | None = None  # CSV track_id,isrc,artist,title

    _uris = field_validator("catalogue_index_uri")(_uri)


class RecommendConf(_Section):
    """`genrecast recommend` / `similar`: nearest neighbours over the scores' track embeddings."""

    k: int = Field(10, gt=0)
    method: Literal["auto", "exact", "hnsw", "ivf"] = "auto"
    exact_max_tracks: int = Field(50_000, gt=0)  # auto: exact search up to here, an ANN index above
    hnsw_m: int = Field(16, ge=2)
    hnsw_ef_construction: int = Field(200, gt=0)
    hnsw_ef: int = Field(200, gt=0)  # query beam: more recall, more time (bench/recommend.py)
    ivf_nprobe: int | None = Field(None, gt=0)  # None: a sixteenth of the lists
    recall_queries: int = Field(1000, gt=0)  # ANN runs: queries sampled to measure recall@k vs exact
    quality_tracks: int = Field(20_000, gt=1)  # labelled tracks sampled for precision@k
    baseline: bool = True  # MFCC-statistics baseline: one Spark pass over the mel dataset
    # --mode nightly: a full recompute instead when more than this share of tracks changed
    full_recompute_share: float = Field(0.2, ge=0, le=1)


class ScoreConf(_Section):
    """`genrecast score`."""

    keep_timeline: bool = False  # also write every clip's prediction to <root>/timelines/model=<id>/


class CompactConf(_Section):
    """`genrecast compact` (and the compact stage of `genrecast nightly`): merge small files."""

    target_file_mb: float = Field(128.0, gt=0)  # merged files are about this size; larger files are left alone
    min_files: int = Field(16, ge=2)  # a table is compacted once it holds this many files under the target


class Config(_Section):
    spark: SparkConf = Field(default_factory=SparkConf)
    storage: StorageConf = Field(default_factory=StorageConf)
    catalogue: CatalogueConf = Field(default_factory=CatalogueConf)
    audio: AudioConf = Field(default_factory=AudioConf)
    genres: list[str] = Field(default_factory=lambda: list(DEFAULT_GENRES))
    ingest: IngestConf = Field(default_factory=IngestConf)
    train: TrainConf = Field(default_factory=TrainConf)
    demo: DemoConf = Field(default_factory=DemoConf)
    spotify: SpotifyConf = Field(default_factory=SpotifyConf)
    recommend: RecommendConf = Field(default_factory=RecommendConf)
    score: ScoreConf = Field(default_factory=ScoreConf)
    compact: CompactConf = Field(default_factory=CompactConf)

    @field_validator("genres")
    @classmethod
    def _genres_unique(cls, genres: list[str]) -> list[str]:
        cleaned = [g.strip() for g in genres]
        if any(not g for g in cleaned):
            raise ValueError("genre names must be non-empty")
        folded = [g.casefold() for g in cleaned]
        if len(set(folded)) != len(folded):
            raise ValueError("genre names must be unique (case-insensitive)")
        return cleaned


def _parse_env_value(raw: str) -> Any:
    """Env values are YAML scalars/flow collections: ``4`` -> int, ``null`` -> None, ``[a, b]``."""
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def _apply_env_overrides(data: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            raise ConfigError(f"environment variable {name}: empty key segment")
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"environment variable {name}: '{part}' is not a section")
            node = child
        node[path[-1]] = _parse_env_value(raw)
    return data


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    return f"{source}: key '{key}': {first['msg']}"


def load_config(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> Config:
    """Load and validate a YAML config file, applying ``GENRECAST__`` environment overrides."""
    environ = dict(os.environ if environ is None else environ)
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file not found: {file}")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{file}: not valid YAML{where}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: top level must be a mapping of sections")
    data = _apply_env_overrides(data, environ)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, str(file))) from None
    if cfg.train.backbone != "scratch":
        from genrecast.backbone import profile_mismatch

        problem = profile_mismatch(cfg.audio, cfg.train.backbone)
        if problem:
            raise ConfigError(f"{file}: key 'train.backbone': {problem}")
    if cfg.train.refit and cfg.train.head != "pooled":
        raise ConfigError(f"{file}: key 'train.refit': only built for train.head pooled (set it to false)")
    if cfg.train.refit and not cfg.train.split.val:
        # No validation tracks: nothing picks the epoch count and nothing is left to add.
        raise ConfigError(f"{file}: key 'train.refit': needs validation tracks (train.split.val > 0)")
    if cfg.train.finetune and not (cfg.train.head == "pooled" and cfg.train.pool_clips):
        # The upper part's inputs are kept per pooled clip: bounded only with pool_clips.
        raise ConfigError(
            f"{file}: key 'train.finetune': only built for train.head pooled with train.pool_clips > 0 (set it to 0)"
        )
    if cfg.train.harmony and cfg.train.head != "pooled":
        raise ConfigError(f"{file}: key 'train.harmony': only built for train.head pooled (set it to 0)")
    if cfg.train.harmony and cfg.train.finetune:
        raise ConfigError(f"{file}: key 'train.harmony': not built together with train.finetune (set one to 0)")
    if cfg.train.classifier == "logistic" and cfg.train.head != "pooled":
        raise ConfigError(
            f"{file}: key 'train.classifier': logistic is only built for train.head pooled (set it to mlp)"
        )
    if cfg.train.classifier == "logistic" and cfg.train.finetune:
        raise ConfigError(
            f"{file}: key 'train.classifier': logistic is not built together with train.finetune (set it to 0)"
        )
    if cfg.train.pool_clips and cfg.train.head != "pooled":
        raise ConfigError(f"{file}: key 'train.pool_clips': only used with train.head pooled (set it to 0)")
    if cfg.train.head == "pooled":
        if cfg.train.backbone == "scratch":
            raise ConfigError(f"{file}: key 'train.head': pooled needs a pretrained train.backbone, not scratch")
        if cfg.train.augment.use or cfg.train.augment.balanced:
            # The pooled head trains on per-track feature vectors computed once: no clip to augment.
            raise ConfigError(
                f"{file}: key 'train.augment': not applied with train.head pooled (use: [], balanced: false)"
            )
    return cfg
