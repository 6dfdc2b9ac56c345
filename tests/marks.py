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


def quick_one_per_family(cases: list[tuple[str, str]], families: tuple[str, ...], mode: str) -> list:
    """pytest params for ``cases`` with every case but one per family (zoo names starting with one of ``families``:
    its first model, in ``mode`` where that model has it) marked ``slow``, and the cases of no family in ``families``:
    ``-m "not slow"`` runs one export of each family named, the full suite runs them all."""
    kept = {}
    for name, msda in cases:
        family = next((prefix for prefix in families if name.startswith(prefix)), None)
        if family is None:
            continue
        if family not in kept or (kept[family][0] == name and msda == mode):
            kept[family] = (name, msda)
    quick = set(kept.values())
    return [
        pytest.param(name, msda, marks=() if (name, msda) in quick else pytest.mark.slow, id=f"{name}-{msda}")
        for name, msda in cases
    ]


def quick_first_of(names: list[str], groups: tuple[str, ...]) -> list:
    """pytest params for the zoo ``names`` with all but the first name of each group (names starting with one of
    ``groups``; the longest prefix decides) marked ``slow``; names of no group stay in the quick run."""
    seen, params = set(), []
    for name in names:
        group = max((prefix for prefix in groups if name.startswith(prefix)), key=len, default=None)
        marks = pytest.mark.slow if group is not None and group in seen else ()
        seen.add(group)
        params.append(pytest.param(name, marks=marks, id=name))
    return params


# One group per architecture the zoo's families come in (the quick run's share of the per-zoo-model checks).
ARCHITECTURES = (
    "detr_",
    "conditional_detr_",
    "deformable_detr_",
    "dab_detr_",
    "dino_",
    "rtdetr_r",
    "rtdetr_hgnetv2_",
    "rtdetrv2_",
    "dfine_",
    "rfdetr_",
)
