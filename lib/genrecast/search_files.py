"""The catalogue's search arrays shipped to executors as files they memory-map, not broadcasts.

A PySpark broadcast is pickled: every Python worker unpickles its own copy, so an executor with
c cores holds the (n, d) matrix c times over (and the pickled bytes beside it while loading):
~5 GB a worker at 10M x 128 float32. Instead the driver writes the arrays once, as ``.npy`` and
an Arrow IPC file, into a local folder and registers them with ``SparkContext.addFile``: each
executor fetches each file once, and its Python workers map it read-only (``np.load(...,
mmap_mode="r")``, ``pa.memory_map``). The pages belong to the OS page cache, shared by every
worker on the machine, loaded only where a search touches them and dropped under memory pressure
instead of failing the task. An ANN index travels the same way: IVF's arrays are mapped too;
hnswlib reads its graph file into each process (it cannot map it), still without pickling.

Files are named by the run (``<tag>-<part>``), so runs sharing one Spark application never mix;
Spark deletes the executors' copies when the application ends.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from genrecast.neighbours import AnnIndex, load_index

# Opened files of this Python worker, by file name (a reused worker maps each file once).
_OPEN: dict[str, Any] = {}


@dataclass(frozen=True)
class SearchFiles:
    """Names of one run's shipped files; the accessors open them on an executor."""

    tag: str
    method: str = "exact"
    index_parts: dict[str, str] = field(default_factory=dict)  # ANN index part -> file name
    index_params: dict[str, Any] = field(default_factory=dict)

    def _path(self, name: str) -> str:
        from pyspark import SparkFiles

        return SparkFiles.get(name)

    def _open(self, key: str, make: Any) -> Any:
        """``make()``'s result, once per Python worker and ``key``."""
        if key not in _OPEN:
            for old in [k for k in _OPEN if not k.startswith(f"{self.tag}-")]:
                del _OPEN[old]  # another run's files: let their maps go
            _OPEN[key] = make()
        return _OPEN[key]

    def _array(self, part: str) -> np.ndarray:
        name = f"{self.tag}-{part}.npy"
        return self._open(name, lambda: np.load(self._path(name), mmap_mode="r"))

    def vectors(self) -> np.ndarray:
        """(n, d) float32 unit rows, read-only map."""
        return self._array("vectors")

    def sha_keys(self) -> np.ndarray:
        """(n,) int64 audio group keys, read-only map."""
        return self._array("sha_keys")

    def track_ids(self) -> pa.StringArray:
        """(n,) track ids, sorted, zero-copy over the mapped Arrow file."""

        name = f"{self.tag}-track_ids.arrow"

        def make() -> pa.Array:
            with pa.ipc.open_file(pa.memory_map(self._path(name))) as reader:
                return reader.read_all().column(0).combine_chunks()

        return self._open(name, make)

    def index(self) -> AnnIndex | None:
        """The ANN index, or None for exact search."""
        if self.method == "exact":
            return None
        return self._open(
            f"{self.tag}-index",
            lambda: load_index(self.method, {p: self._path(n) for p, n in self.index_parts.items()}, self.index_params),
        )


@contextmanager
def shipped(
    sc: Any, tag: str, vectors: np.ndarray, sha_keys: np.ndarray, track_ids: list[str], index: AnnIndex | None = None
) -> Iterator[SearchFiles]:
    """Write the arrays (and ``index``) to a local temporary folder and ``addFile`` them; the
    folder is removed on exit, so run every Spark job that reads them inside the block."""
    with tempfile.TemporaryDirectory(prefix="genrecast-search-") as folder:

        def path(part: str) -> str:
            return os.path.join(folder, f"{tag}-{part}")

        np.save(path("vectors.npy"), np.ascontiguousarray(vectors, np.float32))
        np.save(path("sha_keys.npy"), np.asarray(sha_keys, np.int64))
        table = pa.table({"track_id": pa.array(track_ids, pa.string())})
        with pa.ipc.new_file(path("track_ids.arrow"), table.schema) as writer:
            writer.write_table(table)
        del table
        files = SearchFiles(tag)
        if index is not None:
            parts, params = index.save(path("index"))
            names = {part: os.path.basename(p) for part, p in parts.items()}
            files = SearchFiles(tag, index.method, names, params)
        for name in sorted(os.listdir(folder)):
            sc.addFile(os.path.join(folder, name))
        yield files
