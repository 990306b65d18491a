"""Train / validation / test split by track, or by artist where labels name one.

Clips of one track - and, with ``by: artist_or_track``, tracks of one artist (the demo's groove
family) - always land on the same side: clip-level splits leak (neighbouring clips of a track
are near duplicates) and artist-level leakage inflates accuracy the same way. Deterministic for
a seed, stratified by genre so every genre is on both sides where it has two or more groups.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

TRAIN, VAL, TEST = "train", "val", "test"


@dataclass(frozen=True)
class LabelledTrack:
    track_id: str
    genre: str
    artist: str | None = None


def group_of(track: LabelledTrack, by: str) -> str:
    """The unit that must not straddle splits."""
    if by == "artist_or_track" and track.artist:
        return f"artist:{track.artist}"
    return f"track:{track.track_id}"


def _take(groups: list[str], fraction: float, rng: np.random.Generator) -> set[str]:
    if len(groups) < 2 or fraction <= 0:
        return set()
    n = min(len(groups) - 1, max(1, math.ceil(fraction * len(groups))))
    order = rng.permutation(len(groups))
    return {groups[i] for i in order[:n]}


def assign_splits(
    tracks: list[LabelledTrack], test: float, val: float, seed: int, by: str = "artist_or_track"
) -> dict[str, str]:
    """``track_id -> train|val|test``. ``test`` is a fraction of groups per genre; ``val`` a
    fraction of the remaining training groups (for early stopping)."""
    genre_votes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for t in tracks:
        genre_votes[group_of(t, by)][t.genre] += 1
    by_genre: dict[str, list[str]] = defaultdict(list)
    for group, votes in genre_votes.items():
        # A group spanning genres goes with its majority genre (ties: alphabetical).
        by_genre[max(sorted(votes), key=lambda g: votes[g])].append(group)
    side: dict[str, str] = {}
    for genre in sorted(by_genre):
        groups = sorted(by_genre[genre])
        digest = hashlib.sha256(f"{seed}:{genre}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        test_groups = _take(groups, test, rng)
        rest = [g for g in groups if g not in test_groups]
        val_groups = _take(rest, val, rng)
        for g in groups:
            side[g] = TEST if g in test_groups else VAL if g in val_groups else TRAIN
    return {t.track_id: side[group_of(t, by)] for t in tracks}


def split_counts(assignment: Mapping[str, str]) -> dict[str, int]:
    counts = {TRAIN: 0, VAL: 0, TEST: 0}
    for s in assignment.values():
        counts[s] += 1
    return counts
