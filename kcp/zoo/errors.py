"""The errors the zoo raises for users: each message says what is wrong and what to do."""

from __future__ import annotations


class ZooError(ValueError):
    """A user-facing refusal from the model zoo (unknown model, bad layer name, ...)."""


class WeightsUnavailable(ZooError):
    """Pretrained weights are not cached and cannot be downloaded now."""


class CheckpointError(ZooError):
    """A user checkpoint that the zoo refuses to load."""
