"""The package version, in the bottom layer so results and stores can stamp it without importing
the `headscope` facade."""

__version__ = "0.1.0"
