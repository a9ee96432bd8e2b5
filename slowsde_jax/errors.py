"""Kept for older imports: the error type and checkers now live in :mod:`slowsde_jax.validation`."""
from .validation import ConfigError, check_int, check_range, suggest

__all__ = ["ConfigError", "check_int", "check_range", "suggest"]
