"""Rating a drill's objectives P / S / M / U from what the system's events showed.

The ratings are HSEEP's (Homeland Security Exercise and Evaluation Program, 2020, ch. 5):
P performed without challenges, S performed with some challenges, M performed with major
challenges, U unable to be performed. The rules that turn a measurement into a rating are ours,
stated once here and printed beside every rating:

- a time target T (scenario seconds from the first alarm, at most): P when measured <= T,
  S when <= 1.5 T, M when later, U when it never happened before the drill ended;
- a count target N (at most): P when measured <= N, S when <= N + max(1, N / 2), M above that;
  a count is always measured, so never U.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .scenario import Measure, Objective

__all__ = ["MEANINGS", "Rating", "rate", "score"]

MEANINGS = {
    "P": "performed without challenges",
    "S": "performed with some challenges",
    "M": "performed with major challenges",
    "U": "unable to be performed",
}
"""HSEEP's rating letters and what each means."""


@dataclass(frozen=True)
class Rating:
    """One objective's rating, the rule that gave it, and what was measured."""

    letter: str
    rule: str
    measured: float | None


def _count(x: float) -> str:
    """A count as written in a rule: every digit of a whole number (``:g`` wrote 1,000,001 as
    1e+06, which reads as within a target of 1,000,000), one decimal of a half."""
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def rate(measure: Measure, target: float, measured: float | None) -> Rating:
    """The rating of one measurement against its target (see the module docstring for the rules).

    ``target`` and ``measured`` are scenario seconds for a time, whole numbers for a count;
    ``measured`` is None when the event never happened."""
    if measure.is_count:
        value = 0.0 if measured is None else measured
        slack = max(1.0, target / 2)
        if value <= target:
            return Rating("P", f"count {_count(value)} <= target {_count(target)}", value)
        if value <= target + slack:
            return Rating("S", f"count {_count(value)} <= target + {_count(slack)}", value)
        return Rating("M", f"count {_count(value)} > target + {_count(slack)}", value)
    if measured is None:
        return Rating("U", "never observed before the drill ended", None)
    if measured <= target:
        return Rating("P", f"{measured:.0f} s <= target {target:.0f} s", measured)
    if measured <= 1.5 * target:
        return Rating("S", f"{measured:.0f} s <= 1.5 x target ({1.5 * target:.0f} s)", measured)
    return Rating("M", f"{measured:.0f} s > 1.5 x target ({1.5 * target:.0f} s)", measured)


def score(
    objectives: list[Objective], measured: Mapping[Measure, float | None], evidence: Mapping[Measure, str]
) -> list[dict[str, Any]]:
    """Every objective with its target, measurement, rating, rule and evidence, in the report's
    shape (``target_s``/``measured_s`` are scenario seconds for times, counts for counts)."""
    rows = []
    for o in objectives:
        r = rate(o.measure, o.target_value, measured.get(o.measure))
        rows.append(
            {
                "id": o.id,
                "capability": o.capability,
                "description": o.description,
                "measure": o.measure.value,
                "target_s": o.target_value,
                "measured_s": r.measured,
                "rating": r.letter,
                "rule": r.rule,
                "evidence": evidence.get(o.measure, "no event observed"),
            }
        )
    return rows
