"""Exception types that map to the CLI's exit codes (2: usage/config, 1: job failure)."""


class GenrecastError(Exception):
    """Base class; the message is one line, shown to the user as is."""

    exit_code = 1


class ConfigError(GenrecastError):
    """Bad configuration or usage: a missing file, an unknown key, a wrong value."""

    exit_code = 2


class InvalidIdentifier(GenrecastError):
    """A track id or object key that fails validation (``..``, absolute, control characters)."""

    exit_code = 2


class JobError(GenrecastError):
    """A job could not complete."""

    exit_code = 1
