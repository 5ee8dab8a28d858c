"""The errors this package raises on purpose.

Every one derives from `DIVEError`, so a caller (or a front end such as
train.py) can tell "the input, file or setting is wrong, and the message says
how" apart from a bug, which surfaces as any other exception. Each class also
derives from the built-in exception that code written before this module
caught (ValueError for bad values, IndexError for indices, RuntimeError for
checkpoints and training), so existing ``except`` clauses keep working.

The classes are re-exported where they were first defined
(`dive.config.ConfigError`, `dive.data.DataError`,
`dive.checkpoint.CheckpointError`, `dive.engine.TrainingError`).
"""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DIVEError", "DataError", "DataIndexError", "InputError",
           "TrainingError"]


class DIVEError(Exception):
    """Base of every error raised on purpose; the message names what is wrong and what was expected."""


class ConfigError(DIVEError, ValueError):
    """A configuration value, key or file is wrong. The message says which and what is allowed."""


class DataError(DIVEError, ValueError):
    """Data that cannot be read or used. The message names the file or setting and the problem."""


class DataIndexError(DataError, IndexError):
    """A dataset index out of range (an IndexError too, so iteration protocols and old code still work)."""


class InputError(DIVEError, ValueError):
    """A tensor or argument handed to the model or the objective has the wrong shape, dtype or values."""


class CheckpointError(DIVEError, RuntimeError):
    """A checkpoint could not be written or read; the message names the file and the problem."""


class TrainingError(DIVEError, RuntimeError):
    """Training cannot go on; the message says why and what was kept."""
