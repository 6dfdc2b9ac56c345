"""Which cases the quick run (``-m "not slow"``) keeps. Kept apart from tests/helpers.py, whose source is part of the
export store's key: choosing marks must not make every stored export stale."""

import pytest


def slow_after(values, keep: int = 1, ids=None) -> list:
    """pytest params for ``values`` (tuples for several argnames) with all but the first ``keep`` marked ``slow``: the
    quick run checks the first ones, the full suite every one."""
    params = []
    for index, value in enumerate(values):
        args = value if isinstance(value, tuple) else (value,)
        marks = () if index < keep else pytest.mark.slow
        params.append(pytest.param(*args, marks=marks, id=None if ids is None else ids[index]))
    return params
