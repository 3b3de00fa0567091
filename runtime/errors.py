"""What the runtime refuses, as two exceptions: the caller's input is wrong, or over a limit. The service maps
them to 422 InvalidInput and 413 PayloadTooLarge; Python callers get them as ValueErrors."""

from __future__ import annotations


class OperationError(ValueError):
    """A request the runtime refuses; the message names the field, row and column."""


class InputError(OperationError):
    """Wrong width, non-finite values, an empty batch, a parameter out of range, seed with fresh_noise."""


class LimitExceeded(OperationError):
    """More rows or draws than the limits allow."""
