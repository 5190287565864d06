"""Checks of user-given counts, shared by every engine so that they all refuse the same things."""

from __future__ import annotations

from typing import Any

import numpy as np


def check_count(name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` as an int if it is an integer >= ``minimum``; refuse anything else.

    A float is refused even when integral (``3.0``): a count that arrives as a float is usually
    the result of arithmetic the caller did not mean (``n / 2``), and accepting it in one engine
    but not another is what users trip over. Booleans are refused too.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"Expected {name} to be an integer >= {minimum}, got {value!r}.")
    return int(value)
