"""Exceptions headscope raises for bad input: each message names the problem and the fix."""


class HeadscopeError(Exception):
    """Base class for errors raised by headscope itself (never a bare torch traceback)."""


class ModelNotFoundError(HeadscopeError, LookupError):
    """A model name/path that is neither bundled, a local directory, nor in the HF cache."""


class InputError(HeadscopeError, ValueError):
    """Bad prompts, indices or parameters given by the user."""
