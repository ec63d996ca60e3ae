"""Errors that carry the serving decision."""

from __future__ import annotations


class RankerUnavailable(RuntimeError):
    """The model ranker gave no scores (down, slow, not loaded, bad answer): fall back."""

