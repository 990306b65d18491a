"""Quality of the recommend job's neighbours: genre precision@k of the embedding vs an
MFCC-statistics baseline (with and without an artist filter), the precision table printed in
the job's summary, and the report files beside the table (embedding map, duplicates list).

The embedding map's PCA is fitted on the plotted sample only (at most ``MAP_POINTS`` rows), so
its cost does not grow with the catalogue.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import numpy as np

from genrecast import commit
from genrecast.catalogue import Label
from genrecast.config import Config, RecommendConf
from genrecast.neighbours import Exclusion, exact_topk, group_keys, l2_normalise, precision_at_k
from genrecast.neighbours_table import ScoresFrame
from genrecast.storage import Storage

MAP_POINTS = 20_000


# -- precision -----------------------------------------------------------------------------------


def finite(x: float) -> float | None:
    """NaN (nothing to measure) -> None, so quality.json stays strict JSON."""
    return None if math.isnan(x) else x


def genre_precision(
    vectors: np.ndarray,
    genres: list[str],
    artists: list[str | None],
    dup_keys: np.ndarray,
    k: int,
    query_sets: dict[str, np.ndarray],
) -> dict[str, dict[str, float | int | None]]:
    """Genre precision@k among a labelled pool, with and without the artist filter.

    ``vectors`` (n, d) unit rows of the pool: every row is a candidate, never itself or a
    duplicate (same ``dup_keys``). ``query_sets`` name boolean (n,) masks of which rows count as
    queries. ``artist_filtered``: tracks by the query's artist are removed before taking the top k.
    Returns ``{set: {"queries", "plain", "artist_filtered"}}``.
    """
    rows = np.arange(len(vectors))
    labels, artist_keys = group_keys(genres), group_keys(artists)
    base = [Exclusion(rows, rows), Exclusion(dup_keys, dup_keys)]
    plain, _ = exact_topk(vectors, vectors, k, base)
    filtered, _ = exact_topk(vectors, vectors, k, [*base, Exclusion(artist_keys, artist_keys)])
    out: dict[str, dict[str, float | int | None]] = {}
    for name, mask in query_sets.items():
        out[name] = {
            "queries": int(mask.sum()),
            "plain": finite(precision_at_k(plain[mask], labels[mask], labels)),
            "artist_filtered": finite(precision_at_k(filtered[mask], labels[mask], labels)),
        }
    return out


def _mfcc_file(uri: str, storage: Storage, wanted: dict[str, str]) -> list[tuple[str, np.ndarray, int]]:
    """Executor: per track, the sum of its clips' MFCC statistics and the clip count (only clips
    of ``wanted`` tracks whose hash matches the scored audio)."""
    from genrecast.features import mfcc_stats

    table = storage.read_parquet(uri, columns=["track_id", "audio_sha256", "mel"])
    sums: dict[str, list] = {}
    for track_id, sha, blob in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True):
        if wanted.get(track_id) != sha:
            continue
        entry = sums.setdefault(track_id, [0.0, 0])
        entry[0] = entry[0] + mfcc_stats(np.load(io.BytesIO(blob)))
        entry[1] += 1
    return [(t, s, c) for t, (s, c) in sums.items()]


def mfcc_baseline_vectors(spark: Any, cfg: Config, wanted: dict[str, str]) -> dict[str, np.ndarray]:
    """Per-track mean MFCC statistics (40,) from the mel dataset, for ``wanted`` {track: sha}."""
    from genrecast.dataset import mels_uri

    storage = Storage.from_config(cfg)
    files = commit.table_files(storage, mels_uri(cfg))
    if not files or not wanted:
        return {}
    rdd = spark.sparkContext.parallelize(files, len(files)).flatMap(lambda f: _mfcc_file(f, storage, wanted))
    sums: dict[str, list] = {}
    for track_id, s, c in rdd.collect():
        entry = sums.setdefault(track_id, [0.0, 0])
        entry[0], entry[1] = entry[0] + s, entry[1] + c
    return {t: (s / c).astype(np.float32) for t, (s, c) in sums.items()}


def quality(
    spark: Any,
    cfg: Config,
    frame: ScoresFrame,
    labels: dict[str, Label],
    split: dict[str, str],
    k: int,
    settings: RecommendConf,
) -> dict[str, Any]:
    """precision@k of the embedding and of the MFCC baseline over the same labelled pool."""
    pos = {t: i for i, t in enumerate(frame.track_ids)}
    labelled = [t for t in frame.track_ids if t in labels]
    out: dict[str, Any] = {"k": k, "labelled_scored": len(labelled), "embedding": None, "mfcc_baseline": None}
    if len(labelled) < 2:
        out["note"] = "fewer than 2 scored tracks have a label in labels.csv"
        return out
    if len(labelled) > settings.quality_tracks:
        pick = np.random.default_rng(0).choice(len(labelled), settings.quality_tracks, replace=False)
        labelled = [labelled[i] for i in sorted(pick)]
    baseline: dict[str, np.ndarray] = {}
    if settings.baseline:
        baseline = mfcc_baseline_vectors(spark, cfg, {t: frame.shas[pos[t]] for t in labelled})
        if baseline:
            # Same pool for both, so the two numbers compare like for like.
            labelled = [t for t in labelled if t in baseline]
        else:
            out["note"] = "no mel dataset rows for the scored tracks: MFCC baseline skipped"
    rows = np.asarray([pos[t] for t in labelled], np.int64)
    genres = [labels[t].genre for t in labelled]
    artists = [labels[t].artist for t in labelled]
    dup_keys = group_keys([frame.shas[i] for i in rows])
    query_sets = {"all": np.ones(len(rows), bool)}
    test = np.asarray([split.get(t) == "test" for t in labelled])
    if test.any():
        query_sets["test"] = test  # queries the model never trained on
    out["pool"] = len(rows)
    out["embedding"] = genre_precision(frame.embeddings[rows], genres, artists, dup_keys, k, query_sets)
    if baseline:
        x = np.stack([baseline[t] for t in labelled])
        x = (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-6)  # standardise: no band dominates
        out["mfcc_baseline"] = genre_precision(l2_normalise(x), genres, artists, dup_keys, k, query_sets)
    return out


# -- report files ------------------------------------------------------------------------------


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) -> ((n, 2) first two principal components, (2,) share of variance each), by numpy
    SVD of the centred rows."""
    xc = x - x.mean(axis=0)
    _u, s, vt = np.linalg.svd(xc, full_matrices=False)
    return xc @ vt[:2].T, (s[:2] ** 2) / max(float((s**2).sum()), 1e-12)


def plot_embedding_map(frame: ScoresFrame, labels: dict[str, Label], genre_order: list[str], path: str) -> None:
    """PCA map of the embeddings, coloured by labels.csv genre (filled) else predicted (hollow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(frame.track_ids)
    show = np.sort(np.random.default_rng(0).choice(n, MAP_POINTS, replace=False)) if n > MAP_POINTS else np.arange(n)
    # PCA of the plotted rows only: (MAP_POINTS, d) at most, whatever the catalogue size.
    xy, share = pca_2d(frame.embeddings[show])
    ids = [frame.track_ids[i] for i in show]
    known = np.asarray([t in labels for t in ids], bool)
    genre = [labels[t].genre if t in labels else (frame.genres[i] or "?") for i, t in zip(show, ids, strict=True)]
    order = genre_order + sorted(set(genre) - set(genre_order))
    cmap = plt.get_cmap("tab10" if len(order) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(7.5, 6))
    size = 14 if len(show) < 2000 else 4
    for ci, g in enumerate(order):
        sel = np.flatnonzero(np.asarray([x == g for x in genre], bool))  # positions in show / xy
        if not sel.size:
            continue
        colour = cmap(ci % cmap.N)
        lab, pred = sel[known[sel]], sel[~known[sel]]
        ax.scatter(xy[lab, 0], xy[lab, 1], s=size, color=colour, alpha=0.75, label=g, linewidths=0)
        ax.scatter(xy[pred, 0], xy[pred, 1], s=size, facecolors="none", edgecolors=[colour], alpha=0.75)
    ax.set_title(f"track embeddings, PCA ({len(show)} of {n}; filled: labels.csv genre, hollow: predicted)")
    ax.set_xlabel(f"PC 1 ({share[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({share[1]:.0%} of variance)")
    ax.legend(fontsize=8, markerscale=2 if size < 10 else 1, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def duplicates_csv(groups: list[list[str]], frame: ScoresFrame) -> bytes:
    sha = dict(zip(frame.track_ids, frame.shas, strict=True))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["audio_sha256", "track_id"])
    for g in groups:
        w.writerows([sha[t], t] for t in g)
    return buf.getvalue().encode()


def precision_lines(q: dict[str, Any], k: int) -> list[str]:
    """The precision@k table: a column per query set, a row per method, "plain / filtered"."""
    if not q.get("embedding"):
        return []
    sets = list(q["embedding"])  # "all", plus "test" when model.json has a test split
    heads = {"all": "all labelled", "test": "test split"}

    def cell(m: dict[str, Any]) -> str:
        return " / ".join("-" if m[key] is None else f"{m[key]:.3f}" for key in ("plain", "artist_filtered"))

    out = [
        f"  genre precision@{k} over {q['pool']} labelled tracks (plain / same artist filtered out):",
        f"    {'queries':<16}" + "".join(f"{heads[s]} ({q['embedding'][s]['queries']})".rjust(22) for s in sets),
    ]
    for name, key in (("model embedding", "embedding"), ("MFCC baseline", "mfcc_baseline")):
        if q.get(key):
            out.append(f"    {name:<16}" + "".join(cell(q[key][s]).rjust(22) for s in sets))
    return out
