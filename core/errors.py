"""Errors a user can cause. The CLI prints their message as one line and exits 2."""

from __future__ import annotations


class PushcutError(Exception):
    """Base class: the message names the cause and the fix."""


class ConfigError(PushcutError):
    """A config file or override is wrong."""


class PluginError(PushcutError):
    """A plugin is missing, unavailable, broken, or clashes with another."""


class CheckpointError(PushcutError):
    """A checkpoint or weights directory is missing or holds something else."""


class DataError(PushcutError):
    """A demonstration file or other input data has the wrong layout."""


class EnvError(PushcutError):
    """A simulator crashed, hung, or was given bad input."""


def short_list(items: list[str], limit: int = 8) -> str:
    """``items`` for an error message: the first ``limit``, then how many more."""
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', … ({len(items) - limit} more)' if len(items) > limit else ''}]"
