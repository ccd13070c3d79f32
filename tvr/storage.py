"""Helpers shared by the on-disk stores (placeholder until the store helpers land)."""


class ConfigMismatchError(ValueError):
    """A recorded configuration differs from the one asked for."""
