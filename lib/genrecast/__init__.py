"""genrecast: content-based music analysis in batch (ingest, train, score, recommend)."""

__version__ = "0.1.0"
