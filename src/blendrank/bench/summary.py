"""What a bench report says first, read from ``bench.json`` alone: which method won on the
bench's value metric and by how much (lift and CI against the baseline), which training runs to
flag, and which metrics carry the same lifts as another (a plot draws each once).

Pure functions over the parsed JSON; :mod:`blendrank.bench.report` lays them out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Arms that read the world's truth (the ``oracle`` family of :mod:`blendrank.bench.registry`):
#: ceilings to measure against, never the winner of a bench.
CEILING_ARMS = ("segment_oracle", "oracle", "true_score")
#: A Stage-2 run whose last KL to its reference exceeds this, while its probe value
#: (``true_value``) ends no higher than it started, is flagged: it moved far from the reference
#: policy and gained nothing the world measures.
KL_RUNAWAY = 10.0
#: Two metrics whose lifts (point and CI bounds, every arm) agree to this relative tolerance
#: carry the same information (e.g. OPM and orders per request at a fixed page size).
SAME_LIFT_RTOL = 1e-6

Interval = tuple[float | None, float | None, float | None]  # (point, lo, hi)


@dataclass(frozen=True)
class Standing:
    """One arm's lift on the value metric against the baseline, with its 95% CI."""

    arm: str
    rel: float
    lo: float | None
    hi: float | None

    @property
    def verdict(self) -> str:
        """``above``/``below`` the baseline when the CI excludes 0, else ``level``."""
        if self.lo is not None and self.lo > 0:
            return "above"
        if self.hi is not None and self.hi < 0:
            return "below"
        return "level"


@dataclass(frozen=True)
class DriftFlag:
    """A Stage-2 run whose KL to the reference ran away while its probe value did not rise."""

    method: str
    final_kl: float
    first_value: float
    last_value: float


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def value_standings(bench: Mapping[str, Any]) -> list[Standing]:
    """The non-ceiling arms with a value lift in ``bench["lifts"]``, best first."""
    metric = str(bench.get("value_metric") or "value")
    out = []
    for arm, per_metric in (bench.get("lifts") or {}).items():
        if arm in CEILING_ARMS or not isinstance(per_metric, Mapping):
            continue
        entry = per_metric.get(metric)
        if not isinstance(entry, Mapping) or (rel := _num(entry.get("rel"))) is None or math.isnan(rel):
            continue
        ci = entry.get("ci95")
        lo, hi = (_num(ci[0]), _num(ci[1])) if isinstance(ci, Sequence) and len(ci) == 2 else (None, None)
        out.append(Standing(str(arm), rel, lo, hi))
    return sorted(out, key=lambda s: -s.rel)


def stage2_records(log: Any) -> list[Mapping[str, Any]]:
    """A method's learning-curve records of Stage 2 (records without a stage count as Stage 2)."""
    if not isinstance(log, Sequence) or isinstance(log, str):
        return []
    return [r for r in log if isinstance(r, Mapping) and r.get("stage", 2) == 2 and "step" in r]


def kl_runaway(learning_curves: Mapping[str, Any], threshold: float = KL_RUNAWAY) -> list[DriftFlag]:
    """Runs whose last logged ``kl`` exceeds ``threshold`` while their last ``true_value`` is
    no higher than their first (see :data:`KL_RUNAWAY`). Runs without both scalars are not
    judged."""
    flags = []
    for method, log in (learning_curves or {}).items():
        recs = stage2_records(log)
        kls = [x for r in recs if (x := _num(r.get("kl"))) is not None]
        values = [x for r in recs if (x := _num(r.get("true_value"))) is not None]
        if kls and len(values) >= 2 and kls[-1] > threshold and values[-1] <= values[0]:
            flags.append(DriftFlag(str(method), kls[-1], values[0], values[-1]))
    return flags


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=SAME_LIFT_RTOL, abs_tol=1e-12)


def same_lifts(data: Mapping[str, Mapping[str, Interval]], metrics: Sequence[str]) -> dict[str, str]:
    """``{metric: earlier metric}`` for each metric whose lifts equal an earlier one's for every
    arm in ``data`` (``{arm: {metric: (point, lo, hi)}}``); metrics with no lift are skipped."""
    twins: dict[str, str] = {}
    kept: list[str] = []
    for m in metrics:
        row = [data[a].get(m, (None, None, None)) for a in data]
        if all(p is None for p, _, _ in row):
            continue
        for k in kept:
            other = [data[a].get(k, (None, None, None)) for a in data]
            if all(_close(x, y) for r, o in zip(row, other) for x, y in zip(r, o)):
                twins[m] = k
                break
        else:
            kept.append(m)
    return twins
