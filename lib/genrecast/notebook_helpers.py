"""Small helpers for the notebooks in ``notebooks/``, and running those notebooks headless.

The notebooks tell the story of one configured run (``$GENRECAST_CONF``, default
``conf/local.yaml``): the catalogue and mel dataset, the latest model's report, and its
recommendations. Everything here only reads what the jobs wrote and tabulates or plots it; the
pipeline's own logic is called, never copied (decoding: :mod:`genrecast.audio`, mels:
:mod:`genrecast.features`, test clips: :mod:`genrecast.train_worker`, the model:
:mod:`genrecast.model`, neighbours: :mod:`genrecast.neighbours_table`, :mod:`genrecast.similar`).

``python -m genrecast.notebook_helpers [--conf FILE] [--out DIR] NOTEBOOK...`` executes
notebooks with the current Python's ipykernel (no Jupyter kernel needs registering) and writes
the executed copies to ``--out``; ``scripts/notebooks.sh`` (``make notebooks``) runs it.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genrecast import commit, registry
from genrecast.config import AudioConf, Config, load_config
from genrecast.storage import Storage, join

CONF_ENV = "GENRECAST_CONF"
DEFAULT_CONF = "conf/local.yaml"
UNLABELLED = "(unlabelled)"
REPO = Path(__file__).resolve().parents[2]


def notebook_config(environ: Mapping[str, str] | None = None) -> Config:
    """The run a notebook looks at: ``$GENRECAST_CONF``, else ``conf/local.yaml`` (relative
    paths resolve against the working directory: notebooks run from the repository root)."""
    environ = os.environ if environ is None else environ
    return load_config(environ.get(CONF_ENV) or DEFAULT_CONF)


# -- the catalogue and the mel dataset -----------------------------------------------------------


def read_table(cfg: Config, uri: str, columns: list[str] | None = None) -> Any:
    """A committed table (a folder of Parquet files, local or S3) as one pandas DataFrame;
    empty (with ``columns``, if given) when the table has no files yet."""
    import pandas as pd

    storage = Storage.from_config(cfg)
    frames = commit.read_snapshot(
        storage, uri, lambda files: [storage.read_parquet(f, columns=columns).to_pandas() for f in files]
    )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def clip_index(cfg: Config) -> Any:
    """The mel dataset without its mels: a pandas DataFrame, one row per clip, columns
    ``track_id, clip_index, genre, source_uri`` (genre ``(unlabelled)`` where it is null)."""
    from genrecast.dataset import mels_uri

    clips = read_table(cfg, mels_uri(cfg), ["track_id", "clip_index", "genre", "source_uri"])
    if clips.empty:
        raise FileNotFoundError(f"no mel dataset at {mels_uri(cfg)}: run genrecast ingest first")
    clips = clips.sort_values(["track_id", "clip_index"], ignore_index=True)
    clips["genre"] = clips["genre"].fillna(UNLABELLED)
    return clips


def audio_seconds(storage: Storage, uri: str, sample_rate: int) -> float:
    """Length of one audio file in seconds: from its header where soundfile reads it, else by
    decoding it (m4a/aac through ffmpeg, like ingest)."""
    import soundfile as sf

    from genrecast.audio import FFMPEG_EXTENSIONS, decode_audio, extension_of

    data = storage.read_bytes(uri)
    ext = extension_of(uri)
    if ext not in FFMPEG_EXTENSIONS:
        try:
            info = sf.info(io.BytesIO(data))
            if info.frames > 0:
                return info.frames / info.samplerate
        except (sf.LibsndfileError, RuntimeError):
            pass
    return decode_audio(data, ext, sample_rate).size / sample_rate


def genre_summary(cfg: Config, clips: Any, max_tracks_per_genre: int | None = 50) -> Any:
    """Per genre (config order, then unlabelled): tracks, clips, clips per track and track
    length in seconds (mean / min / max over at most ``max_tracks_per_genre`` tracks a genre,
    read from the audio files), plus the hours of audio those lengths add up to."""
    import pandas as pd

    storage = Storage.from_config(cfg)
    per_track = clips.groupby("track_id").agg(genre=("genre", "first"), clips=("clip_index", "size"))
    per_track["source_uri"] = clips.groupby("track_id")["source_uri"].first()
    rows = []
    order = [g for g in cfg.genres if g in set(per_track["genre"])]
    order += sorted(set(per_track["genre"]) - set(order))
    for genre in order:
        tracks = per_track[per_track["genre"] == genre]
        sample = tracks if max_tracks_per_genre is None else tracks.head(max_tracks_per_genre)
        seconds = np.asarray([audio_seconds(storage, u, cfg.audio.sample_rate) for u in sample["source_uri"]])
        rows.append(
            {
                "genre": genre,
                "tracks": len(tracks),
                "clips": int(tracks["clips"].sum()),
                "clips_per_track": float(tracks["clips"].mean()),
                "seconds_mean": float(seconds.mean()),
                "seconds_min": float(seconds.min()),
                "seconds_max": float(seconds.max()),
                "hours": float(seconds.mean() * len(tracks) / 3600),
            }
        )
    return pd.DataFrame(rows).set_index("genre")


def example_tracks(clips: Any, genres: Sequence[str], per_genre: int = 1) -> list[tuple[str, str, str]]:
    """``(genre, track_id, source_uri)`` of the first ``per_genre`` tracks (by id) of each genre."""
    firsts = clips.drop_duplicates("track_id")
    out = []
    for genre in genres:
        rows = firsts[firsts["genre"] == genre].head(per_genre)
        out += [(genre, r.track_id, r.source_uri) for r in rows.itertuples()]
    return out


def dataset_clips(cfg: Config, track_id: str) -> np.ndarray:
    """The stored clips of one track as the model sees them: (n_clips, n_mels, frames) dB,
    read with :func:`genrecast.dataset.make_mel_reader` (Petastorm)."""
    from petastorm.predicates import in_set

    from genrecast.dataset import make_mel_reader

    rows = []
    with make_mel_reader(
        cfg,
        schema_fields=["track_id", "clip_index", "mel"],
        predicate=in_set({track_id}, "track_id"),
        num_epochs=1,
        shuffle_row_groups=False,
        workers_count=1,
    ) as reader:
        rows = sorted((r.clip_index, r.mel) for r in reader)
    return np.stack([m for _i, m in rows]) if rows else np.zeros((0, 0, 0), np.float32)


def plot_mel(ax: Any, mel: np.ndarray, audio: AudioConf, title: str = "", start_s: float = 0.0) -> Any:
    """Draw a (n_mels, frames) dB log-mel on ``ax``: time in seconds, mel band index up."""
    seconds = mel.shape[1] * audio.hop_length / audio.sample_rate
    image = ax.imshow(
        mel,
        origin="lower",
        aspect="auto",
        cmap="magma",
        extent=(start_s, start_s + seconds, 0, mel.shape[0]),
        vmin=max(float(mel.max()) - 80.0, float(mel.min())),
    )
    ax.set_xlabel("s")
    ax.set_ylabel("mel band")
    ax.set_title(title, fontsize=9)
    return image


# -- the model's report --------------------------------------------------------------------------


def model_report_file(cfg: Config, model_id: str, name: str) -> bytes:
    """A file of ``<root>/models/<id>/report/`` (metrics.json, confusion.png, curves.png...)."""
    return Storage.from_config(cfg).read_bytes(join(registry.report_uri(cfg, model_id), name))


def per_genre_table(metrics: dict[str, Any]) -> Any:
    """metrics.json -> DataFrame per genre: the CNN's precision/recall/F1 on test tracks, the
    MFCC baseline's, and the F1 difference (CNN minus baseline)."""
    import pandas as pd

    cnn, base = metrics["cnn_track"]["per_genre"], metrics["baseline_track"]["per_genre"]
    rows = [
        {
            "genre": g,
            "test tracks": m["support"],
            "cnn precision": m["precision"],
            "cnn recall": m["recall"],
            "cnn f1": m["f1"],
            "baseline precision": base[g]["precision"],
            "baseline recall": base[g]["recall"],
            "baseline f1": base[g]["f1"],
            "f1 gain": m["f1"] - base[g]["f1"],
        }
        for g, m in cnn.items()
    ]
    return pd.DataFrame(rows).set_index("genre")


@dataclass
class SplitPredictions:
    """The model's predictions on its test split, as the train job's evaluation made them."""

    genres: list[str]
    tracks: Any  # DataFrame: track_id, true, predicted, confidence, correct, source_uri
    clips: np.ndarray  # (n_clips, n_mels, frames) dB
    clip_tracks: list[str]
    clip_probs: np.ndarray  # (n_clips, n_genres)
    clip_labels: np.ndarray  # (n_clips,) index into genres

    def track_clips(self, track_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(clips, clip probabilities) of one test track."""
        rows = [i for i, t in enumerate(self.clip_tracks) if t == track_id]
        return self.clips[rows], self.clip_probs[rows]


def predict_test_split(cfg: Config, model_id: str) -> SplitPredictions:
    """Run the saved model over the test split's clips (:func:`registry.read_split`), clip level and
    track level (as scoring does: :meth:`genrecast.score.Predictor.predict_all`), with the train
    job's own building blocks (for a model with ``training.harmony``, the test tracks' audio is
    decoded again for their harmony statistics: :mod:`genrecast.track_harmony`)."""
    import pandas as pd

    from genrecast.dataset import mels_uri
    from genrecast.score import Predictor, predictor_options
    from genrecast.train_worker import load_clips

    model, meta = registry.load_model(cfg, model_id)
    genres = list(meta["genres"])
    test = sorted(t for t, side in registry.read_split(cfg, model_id, meta).items() if side == "test")
    x, y, clip_tracks = load_clips(cfg, test, genres)
    order = sorted(set(clip_tracks))
    rows: dict[str, list[int]] = {t: [] for t in order}
    for i, t in enumerate(clip_tracks):
        rows[t].append(i)
    predictor = Predictor(model, genres, **predictor_options(meta))
    audio = read_table(cfg, mels_uri(cfg), ["track_id", "source_uri", "audio_sha256"])
    audio = audio.drop_duplicates("track_id").set_index("track_id")
    harmony = None
    if predictor.harmony:
        from genrecast.track_harmony import stored_track_harmony

        storage = Storage.from_config(cfg)
        harmony = [
            stored_track_harmony(storage, cfg, t, audio.at[t, "source_uri"], audio.at[t, "audio_sha256"]) for t in order
        ]
    predictions = predictor.predict_all([x[rows[t]] for t in order], harmony=harmony)
    probs = np.zeros((len(x), len(genres)), np.float32)
    for t, (clip_probs, _e, _tp, _te) in zip(order, predictions, strict=True):
        probs[rows[t]] = clip_probs
    track_probs = np.stack([tp for _p, _e, tp, _te in predictions]) if order else np.zeros((0, len(genres)))
    true = {t: genres[label] for t, label in zip(clip_tracks, y, strict=True)}
    tracks = pd.DataFrame(
        {
            "track_id": order,
            "true": [true[t] for t in order],
            "predicted": [genres[i] for i in track_probs.argmax(1)],
            "confidence": track_probs.max(1),
            "source_uri": [audio["source_uri"].get(t) for t in order],
        }
    )
    tracks["correct"] = tracks["true"] == tracks["predicted"]
    return SplitPredictions(genres, tracks, x, list(clip_tracks), probs, y)


# -- recommendations -----------------------------------------------------------------------------


def neighbours_report_file(cfg: Config, model_id: str, name: str) -> bytes:
    """A file of ``<root>/neighbours/model=<id>/_report/`` (quality.json, embedding_map.png...)."""
    from genrecast.neighbours_table import report_uri

    return Storage.from_config(cfg).read_bytes(join(report_uri(cfg, model_id), name))


def precision_table(quality: dict[str, Any]) -> Any:
    """quality.json's ``precision_at_k`` -> DataFrame: a row per method (model embedding, MFCC
    baseline), a column per (query set, plain / same artist filtered out)."""
    import pandas as pd

    q = quality["precision_at_k"]
    rows = {}
    for name, key in (("model embedding", "embedding"), ("MFCC baseline", "mfcc_baseline")):
        for query_set, m in (q.get(key) or {}).items():
            for variant in ("plain", "artist_filtered"):
                rows.setdefault(name, {})[(f"{query_set} ({m['queries']} queries)", variant)] = m[variant]
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table


def example_queries(cfg: Config, model_id: str, per_genre: int = 1, max_genres: int = 4) -> list[str]:
    """Scored, labelled tracks to ask "more like this" for: test-split tracks first (the model
    never trained on them), ``per_genre`` from each of the first ``max_genres`` genres."""
    from genrecast.catalogue import load_labels
    from genrecast.dataset import scores_uri
    from genrecast.neighbours_table import read_scores

    storage = Storage.from_config(cfg)
    labels, _ = load_labels(storage, cfg.catalogue.labels_uri, cfg.genres)
    split = registry.read_split(cfg, model_id)
    scored = read_scores(storage, scores_uri(cfg, model_id), model_id).track_ids
    picks = []
    for genre in [g for g in cfg.genres if any(lab.genre == g for lab in labels.values())][:max_genres]:
        candidates = [t for t in scored if t in labels and labels[t].genre == genre]
        candidates.sort(key=lambda t: (split.get(t) != "test", t))
        picks += candidates[:per_genre]
    return picks


def more_like_this(cfg: Config, track_ids: Sequence[str], k: int = 5, model: str = "latest") -> Any:
    """:func:`genrecast.similar.similar_for_track` for each query, as one DataFrame:
    query, query genre (labels.csv), rank, neighbour, its genre, similarity, same genre."""
    import pandas as pd

    from genrecast.catalogue import load_labels
    from genrecast.similar import similar_for_track

    labels, _ = load_labels(Storage.from_config(cfg), cfg.catalogue.labels_uri, cfg.genres)
    rows = []
    for query in track_ids:
        genre = labels[query].genre if query in labels else None
        for r in similar_for_track(cfg, query, k=k, model=model):
            rows.append(
                {
                    "query": query,
                    "query genre": genre,
                    "rank": r["rank"],
                    "neighbour": r["track_id"],
                    "genre": r["genre"],
                    "similarity": r["similarity"],
                    "same genre": r["genre"] == genre,
                }
            )
    return pd.DataFrame(rows)


# -- running notebooks headless ------------------------------------------------------------------


def execute_notebook(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | None = None,
    conf: str | os.PathLike[str] | None = None,
    timeout: int = 300,
    cwd: str | os.PathLike[str] = REPO,
    env: Mapping[str, str] | None = None,
) -> Any:
    """Execute a notebook with nbclient in a fresh kernel of *this* Python (ipykernel's own
    kernel spec: a Jupyter kernel registered elsewhere is never picked up), with
    ``$GENRECAST_CONF`` = ``conf`` and the working directory ``cwd``. Raises nbclient's
    ``CellExecutionError`` on the first failing cell; ``dst`` (if given) is written either way,
    executed as far as it got. Returns the executed notebook."""
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(src, as_version=4)
    kernel_env = dict(os.environ if env is None else env)
    if conf is not None:
        kernel_env[CONF_ENV] = os.path.abspath(conf)
    km = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    client = NotebookClient(
        nb,
        km=km,
        timeout=timeout,
        allow_errors=False,
        resources={"metadata": {"path": str(cwd)}},
        # C-level output (TensorFlow's start-up lines) goes to this process's stderr, not into
        # the notebook; the kernel's own notices (plain-TCP on loopback) are not the reader's.
        extra_arguments=["--IPKernelApp.capture_fd_output=False", "--IPKernelApp.log_level=ERROR"],
    )
    try:
        client.execute(env=kernel_env)
    finally:
        if dst is not None:
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, dst)
    return nb


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m genrecast.notebook_helpers", description="Execute notebooks headless on a configured run."
    )
    parser.add_argument("notebooks", nargs="+", help="notebooks to execute (left unchanged)")
    parser.add_argument("--conf", default=DEFAULT_CONF, help=f"config the notebooks read (default {DEFAULT_CONF})")
    parser.add_argument("--out", default="notebooks/executed", help="folder for the executed copies")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    from nbclient.exceptions import CellExecutionError

    from genrecast.errors import ConfigError

    try:  # the notebooks read the latest model's outputs: say so once, before any kernel starts
        registry.resolve_model_id(load_config(args.conf), "latest")
    except ConfigError as exc:
        print(f"notebooks: error: {exc}; run `make demo` (or the jobs) for {args.conf} first", file=sys.stderr)
        return 2
    failed = 0
    for src in args.notebooks:
        dst = os.path.join(args.out, os.path.basename(src))
        print(f"executing {src} -> {dst}", flush=True)
        try:
            execute_notebook(src, dst, conf=args.conf, timeout=args.timeout, cwd=os.getcwd())
        except CellExecutionError as exc:
            failed += 1
            error = str(exc).strip().splitlines()
            print(f"{src}: a cell failed ({error[-1] if error else 'error'}); see {dst}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
