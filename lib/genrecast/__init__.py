"""genrecast: content-based music analysis in batch (ingest, train, score, recommend)."""

__version__ = "0.1.0"

import warnings as _warnings

# petastorm 0.12 drives pyarrow 14's legacy dataset API (the pinned stack); its deprecation
# notices are about petastorm's internals, not ours, and bury the jobs' own log lines.
_warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\..*)?")
