"""Errors that reprlab raises for bad input.

Every error a user can cause (a missing file, a malformed line, an unknown name) is a
:class:`ReprlabError` whose message says what is wrong and what to do. The CLI prints the message
on one line and exits with status 2; library users can catch the base class.
"""

from __future__ import annotations


class ReprlabError(Exception):
    """Base class: bad input or a bad request, with an actionable message."""


class ConfigError(ReprlabError):
    """An unknown name, a value out of range or an impossible combination of settings.

    ``field`` names the config field at fault (``"train.lr"``, ``"num_negatives"``); the message then
    starts with it, and the CLI shows the field as the option a user typed (``--lr``).
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.detail = message


class ModelLoadError(ReprlabError):
    """A model folder that is missing, incomplete or not of a supported family."""


class DataFormatError(ReprlabError):
    """A malformed data file. The message names the file and, where there is one, the line."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path = path
        self.line = line


class MissingDependencyError(ReprlabError):
    """An optional package is needed; the message gives the install command."""


def require(module: str, extra: str, package: str | None = None):
    """Import an optional dependency lazily, or raise with the command that installs it.

    >>> tl = require("tensorly", extra="cp")  # doctest: +SKIP
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            f"this needs the optional package '{package or module}': "
            f"pip install 'reprlab[{extra}]' (or pip install {package or module})"
        ) from exc


def config_from_dict(cls, d: dict):
    """``cls(**d)`` for a config dataclass, or a ConfigError that names the fields ``cls`` does not have."""
    import dataclasses

    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
    return cls(**d)
