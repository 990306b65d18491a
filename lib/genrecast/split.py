"""Train / validation / test split by track, or by artist where labels name one.

Clips of one track always land on the same side, and so do the tracks of one **group**: tracks
that share an artist (with ``by: artist_or_track``; the demo's artist is its mma library + kit)
or identical audio (``audio_sha256``: one recording under two track ids), joined transitively
with a union-find - A shares an artist with B and B the audio of C: A, B and C are one group.
Clip-level splits leak (neighbouring clips of a track are near duplicates), and so do artist and
duplicate-audio splits: they inflate test accuracy. Deterministic for a seed, stratified by
genre so every genre is on both sides where it has two or more groups.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

TRAIN, VAL, TEST = "train", "val", "test"


@dataclass(frozen=True)
class LabelledTrack:
    track_id: str
    genre: str
    artist: str | None = None
    audio_sha256: str | None = None


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # The smaller key becomes the root: the result does not depend on the input order.
            self.parent[max(ra, rb)] = min(ra, rb)


def split_groups(tracks: Iterable[LabelledTrack], by: str = "artist_or_track") -> dict[str, str]:
    """``track_id -> group key``: the unit that must not straddle splits.

    Tracks are joined by a shared ``audio_sha256`` always, and by a shared artist with
    ``by="artist_or_track"``. A group is named by its smallest member key (``artist:<name>`` sorts
    before ``track:<id>``), so a catalogue without shared audio keeps the group names - and
    hence the split - it had before duplicate audio was considered.
    """
    uf = _UnionFind()
    tracks = list(tracks)
    for t in tracks:
        node = f"track:{t.track_id}"
        uf.find(node)
        if by == "artist_or_track" and t.artist:
            uf.union(node, f"artist:{t.artist}")
        if t.audio_sha256:
            uf.union(node, f"sha:{t.audio_sha256}")
    names: dict[str, str] = {}  # union-find root -> smallest artist/track key of its component
    for node in list(uf.parent):
        if not node.startswith("sha:"):
            root = uf.find(node)
            names[root] = min(names.get(root, node), node)
    return {t.track_id: names[uf.find(f"track:{t.track_id}")] for t in tracks}


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
    fraction of the remaining training groups (for early stopping). Groups: :func:`split_groups`."""
    group_of = split_groups(tracks, by)
    genre_votes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for t in tracks:
        genre_votes[group_of[t.track_id]][t.genre] += 1
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
    return {t.track_id: side[group_of[t.track_id]] for t in tracks}


def split_counts(assignment: Mapping[str, str]) -> dict[str, int]:
    counts = {TRAIN: 0, VAL: 0, TEST: 0}
    for s in assignment.values():
        counts[s] += 1
    return counts
