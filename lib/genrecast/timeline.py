"""Genre over time: one track's per-clip predictions on a time axis, the segments where its
top genre changes, its genre distribution, and the comparison of two tracks. Pure NumPy, plus
matplotlib (a bare Agg figure) for the pictures; the model call is :class:`genrecast.score.Predictor`'s.

Clip times. Ingest cuts a track's log-mel into clips of ``F = audio.clip_frames`` frames at the
frames :func:`genrecast.features.clip_starts` gives (the last clip end-aligned). Frame ``f`` of
the centred STFT is centred on sample ``f * hop`` and stands for the hop around it, so the clip
starting at frame ``s`` spans ``((s - 1/2) * hop, (s + F - 1/2) * hop) / sample_rate`` seconds,
clipped to ``[0, duration]``; the last clip ends at the track's end (its last frame is the
track's last, whose ``n_fft`` window reaches past the end). Clips thus tile the track without
gaps: each ends where the next one starts, except the last, which overlaps its neighbour. (A
clip lasts ``F * hop / sr`` = 3.019 s for the default 3 s, 130 frames of hop 512 at 22 050 Hz;
the first one 3.007 s, as nothing precedes time 0.)
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from genrecast.config import AudioConf
from genrecast.features import clip_starts

DECIMALS = 6  # probabilities and similarities, as classify's jsonl
TIME_DECIMALS = 4  # seconds: 0.1 ms, finer than a sample at 22 050 Hz is not needed
TOP_PAIRS = 3  # most similar clip pairs reported by compare


def clip_times(n_samples: int, audio: AudioConf) -> tuple[np.ndarray, np.ndarray]:
    """(start_s, end_s) float64 arrays, one entry per clip ingest cuts from ``n_samples``
    samples at ``audio.sample_rate`` (module docstring); empty when shorter than one clip."""
    hop, sr, frames = audio.hop_length, audio.sample_rate, audio.clip_frames
    n_frames = 1 + n_samples // hop  # centred STFT (features.log_mel)
    starts = np.asarray(clip_starts(n_frames, frames), dtype=np.float64)
    duration = n_samples / sr
    start_s = np.clip((starts - 0.5) * hop / sr, 0.0, duration)
    end_s = np.clip((starts + frames - 0.5) * hop / sr, 0.0, duration)
    if len(end_s):
        end_s[-1] = duration  # the track's last frame: its window covers the < 1 hop left after its centre
    return start_s, end_s


@dataclass
class Timeline:
    """One track's clips on a time axis. ``probs`` (n_clips, n_genres) and ``embeddings``
    (n_clips, d, unit length) come from the model, in clip order; ``genre``/``probabilities``
    are the track-level result (:meth:`genrecast.score.Predictor.predict_all`: the clips'
    mean, or a pooled model's head on the track's pooled features)."""

    path: str  # as the user named it: a file, a URI or a track id
    genres: list[str]
    start_s: np.ndarray  # (n_clips,) float64 seconds
    end_s: np.ndarray  # (n_clips,)
    probs: np.ndarray  # (n_clips, n_genres) float32
    embeddings: np.ndarray  # (n_clips, d) float32
    probabilities: np.ndarray  # (n_genres,) the track's
    embedding: np.ndarray  # (d,) unit track embedding
    duration_s: float

    @property
    def genre(self) -> str:
        return self.genres[int(np.argmax(self.probabilities))]

    @property
    def confidence(self) -> float:
        return float(np.max(self.probabilities))

    @property
    def top(self) -> np.ndarray:
        """(n_clips,) int index of each clip's top genre."""
        return np.argmax(self.probs, axis=1)


def clip_rows(tl: Timeline) -> list[dict[str, Any]]:
    """The jsonl ``timeline``: per clip, in order, ``{start_s, end_s, genre, confidence,
    probabilities: {genre: p}}``."""
    rows = []
    for start, end, p in zip(tl.start_s, tl.end_s, tl.probs, strict=True):
        best = int(np.argmax(p))
        rows.append(
            {
                "start_s": round(float(start), TIME_DECIMALS),
                "end_s": round(float(end), TIME_DECIMALS),
                "genre": tl.genres[best],
                "confidence": round(float(p[best]), DECIMALS),
                "probabilities": {g: round(float(x), DECIMALS) for g, x in zip(tl.genres, p, strict=True)},
            }
        )
    return rows


def segments(tl: Timeline) -> list[dict[str, Any]]:
    """Runs of consecutive clips with the same top genre: ``{start_s, end_s, genre, clips}``.
    A segment starts where its first clip starts, except that it never starts before the
    previous segment ends (the end-aligned last clip overlaps its neighbour)."""
    out: list[dict[str, Any]] = []
    for k, g in enumerate(tl.top):
        genre = tl.genres[int(g)]
        if out and out[-1]["genre"] == genre:
            out[-1]["end_s"] = float(tl.end_s[k])
            out[-1]["clips"] += 1
            continue
        start = float(tl.start_s[k]) if not out else max(float(tl.start_s[k]), out[-1]["end_s"])
        out.append({"start_s": start, "end_s": float(tl.end_s[k]), "genre": genre, "clips": 1})
    for s in out:
        s["start_s"], s["end_s"] = round(s["start_s"], TIME_DECIMALS), round(s["end_s"], TIME_DECIMALS)
    return out


def distribution(tl: Timeline) -> dict[str, float]:
    """Share of the track's clips whose top genre is each genre (sums to 1), in model order."""
    counts = np.bincount(tl.top, minlength=len(tl.genres))
    return {g: round(float(c) / len(tl.top), DECIMALS) for g, c in zip(tl.genres, counts, strict=True)}


def _summary_fields(tl: Timeline) -> dict[str, Any]:
    return {
        "path": tl.path,
        "genre": tl.genre,
        "confidence": round(tl.confidence, DECIMALS),
        "probabilities": {g: round(float(p), DECIMALS) for g, p in zip(tl.genres, tl.probabilities, strict=True)},
        "clips": len(tl.top),
        "duration_s": round(tl.duration_s, TIME_DECIMALS),
    }


# -- compare ---------------------------------------------------------------------------------
def compare(a: Timeline, b: Timeline, top_pairs: int = TOP_PAIRS) -> dict[str, Any]:
    """Two tracks side by side (the ``compare --format json`` document): each one's result,
    distribution, change segments and timeline; the cosine similarity of the track embeddings
    and the ``top_pairs`` most similar (clip of A, clip of B) pairs; a text summary."""
    if a.genres != b.genres:
        raise ValueError("timelines from models with different genres")
    track_sim = float(np.clip(np.dot(a.embedding.astype(np.float64), b.embedding.astype(np.float64)), -1.0, 1.0))
    sims = np.clip(a.embeddings.astype(np.float64) @ b.embeddings.astype(np.float64).T, -1.0, 1.0)
    order = np.argsort(-sims, axis=None, kind="stable")[:top_pairs]
    pairs = []
    for flat in order:
        i, j = divmod(int(flat), sims.shape[1])
        pairs.append(
            {
                "a_clip": i,
                "a_start_s": round(float(a.start_s[i]), TIME_DECIMALS),
                "a_end_s": round(float(a.end_s[i]), TIME_DECIMALS),
                "b_clip": j,
                "b_start_s": round(float(b.start_s[j]), TIME_DECIMALS),
                "b_end_s": round(float(b.end_s[j]), TIME_DECIMALS),
                "similarity": round(float(sims[i, j]), DECIMALS),
            }
        )
    doc: dict[str, Any] = {}
    for name, tl in (("a", a), ("b", b)):
        doc[name] = _summary_fields(tl) | {
            "distribution": distribution(tl),
            "segments": segments(tl),
            "timeline": clip_rows(tl),
        }
    doc["similarity"] = {"tracks": round(track_sim, DECIMALS), "clip_pairs": pairs}
    doc["summary"] = summary_text(doc)
    return doc


def _pct(x: float) -> str:
    return f"{round(100 * x):d} %"


def summary_text(doc: dict[str, Any]) -> str:
    """One paragraph from a :func:`compare` document, e.g. "B spends 70 % of its clips in
    reggae, A 10 %. ...": the genre whose share differs most, each track's overall genre,
    distribution and changes of top genre, and the embedding similarities."""
    a, b = doc["a"], doc["b"]
    da, db = a["distribution"], b["distribution"]
    # The genre whose share differs most; on a tie, one that B has more of (B as "the remix"),
    # then the model's genre order. The track with more of it is named first.
    genre = max(da, key=lambda g: (round(abs(db[g] - da[g]), 9), db[g] > da[g]))
    more, less = ("B", "A") if db[genre] >= da[genre] else ("A", "B")
    share = {"A": da[genre], "B": db[genre]}
    parts = []
    if da == db:
        parts.append(f"A and B have the same genre distribution: {_dist_text(da)}.")
    else:
        parts.append(f"{more} spends {_pct(share[more])} of its clips in {genre}, {less} {_pct(share[less])}.")
    for name, t in (("A", a), ("B", b)):
        changes = len(t["segments"]) - 1
        where = "no change of top genre" if changes == 0 else f"top genre changes {changes}x"
        parts.append(
            f"{name} ({_short(t['path'])}, {t['clips']} clips) is {t['genre']} at {t['confidence']:.2f} overall: "
            f"{_dist_text(t['distribution'])}, {where}."
        )
    overlap = sum(min(da[g], db[g]) for g in da)
    sim = doc["similarity"]
    parts.append(
        f"Their clip genre distributions overlap {_pct(overlap)}; "
        f"the track embeddings' cosine similarity is {sim['tracks']:.2f}"
    )
    if sim["clip_pairs"]:
        p = sim["clip_pairs"][0]
        parts[-1] += (
            f", and the most similar clips, A {p['a_start_s']:.1f}-{p['a_end_s']:.1f} s and "
            f"B {p['b_start_s']:.1f}-{p['b_end_s']:.1f} s, reach {p['similarity']:.2f}."
        )
    else:
        parts[-1] += "."
    return " ".join(parts)


def _short(path: str, width: int = 48) -> str:
    return path if len(path) <= width else "..." + path[-(width - 3) :]


def _dist_text(dist: dict[str, float]) -> str:
    ranked = sorted(((g, p) for g, p in dist.items() if p > 0), key=lambda kv: (-kv[1], list(dist).index(kv[0])))
    return ", ".join(f"{g} {_pct(p)}" for g, p in ranked)


def format_compare_table(doc: dict[str, Any]) -> str:
    """The human-readable compare: both tracks, both timelines on one time axis (the clip of
    each track that covers each time), the distributions, the similarities and the summary."""
    a, b = doc["a"], doc["b"]
    lines = []
    for name, t in (("A", a), ("B", b)):
        lines.append(
            f"{name}: {t['path']}  {t['genre']} {t['confidence']:.2f}  ({t['clips']} clips, {t['duration_s']:.1f} s)"
        )
    lines.append("")
    lines.append(f"{'time s':>13}  {'A genre':<14} {'conf':>5}   {'B genre':<14} {'conf':>5}")
    for start, end, ca, cb in _common_axis(a["timeline"], b["timeline"]):
        cols = []
        for c in (ca, cb):
            cols.append(f"{c['genre']:<14} {c['confidence']:>5.2f}" if c else f"{'-':<14} {'':>5}")
        mark = "  *" if ca and cb and ca["genre"] != cb["genre"] else ""
        lines.append(f"{start:>6.1f}-{end:>6.1f}  {cols[0]}   {cols[1]}{mark}")
    lines.append("(* : A and B hear different genres at that time)")
    lines.append("")
    genres = list(a["distribution"])
    width = max(len("genre"), *(len(g) for g in genres))
    lines.append(f"{'genre':<{width}}  {'A clips':>7}  {'B clips':>7}")
    for g in genres:
        if a["distribution"][g] or b["distribution"][g]:
            lines.append(f"{g:<{width}}  {_pct(a['distribution'][g]):>7}  {_pct(b['distribution'][g]):>7}")
    lines.append("")
    sim = doc["similarity"]
    lines.append(f"embedding cosine similarity: tracks {sim['tracks']:.3f}")
    for p in sim["clip_pairs"]:
        lines.append(
            f"  clips A {p['a_start_s']:.1f}-{p['a_end_s']:.1f} s / B {p['b_start_s']:.1f}-{p['b_end_s']:.1f} s: "
            f"{p['similarity']:.3f}"
        )
    lines.append("")
    lines.append(doc["summary"])
    return "\n".join(lines)


def _common_axis(ta: list[dict], tb: list[dict]) -> list[tuple[float, float, dict | None, dict | None]]:
    """Intervals between every clip boundary of both tracks, with the clip of each track that
    covers the interval (None past a track's end). Where the end-aligned last clip overlaps its
    neighbour, the later clip is shown."""
    edges = sorted({c[k] for t in (ta, tb) for c in t for k in ("start_s", "end_s")})

    def covering(t: list[dict], mid: float) -> dict | None:
        hit = None
        for c in t:
            if c["start_s"] <= mid < c["end_s"]:
                hit = c  # later clips win
        return hit

    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if hi - lo < 1e-9:
            continue
        mid = (lo + hi) / 2
        out.append((lo, hi, covering(ta, mid), covering(tb, mid)))
    # Merge neighbours showing the same pair of clips (keeps the table one row per clip overlap).
    merged: list[tuple[float, float, dict | None, dict | None]] = []
    for row in out:
        if merged and merged[-1][2] is row[2] and merged[-1][3] is row[3]:
            merged[-1] = (merged[-1][0], row[1], row[2], row[3])
        else:
            merged.append(row)
    return merged


# -- pictures --------------------------------------------------------------------------------
def _colours(genres: Sequence[str]) -> list[Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(genres) <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(len(genres))]


def _draw(ax: Any, tl: Timeline, colours: list[Any], label: str) -> None:
    """Stacked genre probabilities per clip (bars spanning each clip; the end-aligned last clip
    drawn from its neighbour's end), segment boundaries as dashed lines, segment genres on top."""
    left = tl.start_s.copy()
    if len(left) > 1:
        left[1:] = np.maximum(left[1:], tl.end_s[:-1])
    width = tl.end_s - left
    bottom = np.zeros(len(left))
    for g, name in enumerate(tl.genres):
        ax.bar(left, tl.probs[:, g], width, bottom=bottom, align="edge", color=colours[g], label=name, linewidth=0)
        bottom += tl.probs[:, g]
    segs = segments(tl)
    for s in segs[1:]:
        ax.axvline(s["start_s"], color="black", linestyle="--", linewidth=1.2)
    for s in segs:
        ax.text((s["start_s"] + s["end_s"]) / 2, 1.02, s["genre"], ha="center", va="bottom", fontsize=8, clip_on=False)
    ax.set_ylim(0, 1)
    ax.set_xlim(0, max(tl.duration_s, 1e-6))
    ax.set_ylabel("probability")
    ax.set_title(f"{label}: track genre {tl.genre} ({tl.confidence:.2f})", fontsize=10, pad=18)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def _figure(n_rows: int, width: float) -> tuple[Any, Any]:
    # A bare Figure (Agg canvas), not pyplot: no global backend or figure state, so it works
    # headless and leaves a notebook's inline plotting alone.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 2.6 * n_rows + 0.6))
    return fig, fig.subplots(n_rows, 1, squeeze=False, sharex=True)


def timeline_png(tl: Timeline) -> bytes:
    """PNG bytes: one track's stacked genre probabilities over time (see :func:`_draw`)."""
    fig, axes = _figure(1, 9)
    colours = _colours(tl.genres)
    _draw(axes[0, 0], tl, colours, _short(tl.path, 60))
    axes[0, 0].set_xlabel("time (s)")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="center right", fontsize=8, bbox_to_anchor=(1.08, 0.5))
    return _png(fig)


def compare_png(a: Timeline, b: Timeline, doc: dict[str, Any] | None = None) -> bytes:
    """PNG bytes: A above B on one time axis, with the track similarity in the title."""
    fig, axes = _figure(2, 9)
    colours = _colours(a.genres)
    _draw(axes[0, 0], a, colours, "A " + _short(a.path, 50))
    _draw(axes[1, 0], b, colours, "B " + _short(b.path, 50))
    axes[1, 0].set_xlim(0, max(a.duration_s, b.duration_s))
    axes[1, 0].set_xlabel("time (s)")
    if doc is not None:
        fig.suptitle(f"track embedding cosine similarity {doc['similarity']['tracks']:.2f}", fontsize=10)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="center right", fontsize=8, bbox_to_anchor=(1.08, 0.5))
    return _png(fig)


def png_names(paths: Sequence[str]) -> list[str]:
    """One ``<file stem>.png`` per input path, made unique with ``-2``, ``-3`` ... in input order."""
    seen: dict[str, int] = {}
    out = []
    for path in paths:
        stem = path.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0] or "track"
        stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)
        n = seen.get(stem, 0) + 1
        seen[stem] = n
        out.append(f"{stem}.png" if n == 1 else f"{stem}-{n}.png")
    return out

