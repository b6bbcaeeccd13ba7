"""Study v2's decision statistics (docs/experiments/v2/DESIGN.md): one-sided paired t-tests, Holm's step-down
adjustment, intervals clipped to a metric's range, the gate and the verdict labels."""

from __future__ import annotations

import math
from typing import Sequence

from xllava_jax.experiments.stats import mean_ci95

ALPHA = 0.05


def expectation(expect: str) -> tuple[float, float]:
    """(sign, delta) of an expectation: '>' (a - b > 0), '<' (a - b < 0), 'noninferior:<margin>' (a - b > -margin)."""
    if expect == ">":
        return 1.0, 0.0
    if expect == "<":
        return -1.0, 0.0
    if expect.startswith("noninferior:"):
        return 1.0, -float(expect.split(":", 1)[1])
    raise ValueError(f"unknown expectation {expect!r} (>, <, noninferior:<margin>)")


def one_sided_p(diffs: Sequence[float], expect: str) -> float | None:
    """p of the one-sided paired t-test of the expectation (H0: sign (mean - delta) <= 0), df = n - 1; None with
    fewer than two values; with zero spread, 0 or 1 by the sign of the (mean - delta)."""
    from scipy import stats
    sign, delta = expectation(expect)
    n = len(diffs)
    if n < 2:
        return None
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    if sd == 0.0:
        return 0.0 if sign * (mean - delta) > 0 else 1.0
    t = sign * (mean - delta) / (sd / math.sqrt(n))
    return float(stats.t.sf(t, n - 1))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: p_adj(i) = max_{j<=i} min(1, (m - j + 1) p(j))."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def clipped(m: dict, lo: float, hi: float) -> dict:
    """A mean_ci95 dict with its interval clipped to [lo, hi] (the metric's range)."""
    a, b = m["ci95"]
    if a is None:
        return m
    return {**m, "ci95": [min(max(a, lo), hi), min(max(b, lo), hi)], "clipped": a < lo or b > hi}


def metric_range(metric: str) -> tuple[float, float]:
    """The range of a metric: [0, 1] for accuracies, unbounded otherwise."""
    return (0.0, 1.0) if metric.startswith(("acc_", "fc_")) else (-math.inf, math.inf)


def difference(a: Sequence[float], b: Sequence[float], metric: str) -> dict:
    """mean_ci95 of a - b paired by seed, its interval clipped to [-range, range] for bounded metrics."""
    lo, hi = metric_range(metric)
    return clipped(mean_ci95([x - y for x, y in zip(a, b)]), -(hi - lo), hi - lo)


def at_floor(a: Sequence[float], b: Sequence[float], metric: str) -> bool:
    """Every value of both arms at the metric's floor (0 for accuracies): nothing to test."""
    lo, _ = metric_range(metric)
    return math.isfinite(lo) and all(v <= lo for v in (*a, *b))


def gate_passes(diffs: Sequence[float], effect: float) -> bool:
    """The gate: mean paired difference >= `effect` and one-sided p < ALPHA."""
    p = one_sided_p(diffs, ">")
    return p is not None and sum(diffs) / len(diffs) >= effect and p < ALPHA


def verdict(expect: str, diffs: Sequence[float], p: float | None, *, adjusted: bool, floor: bool = False,
            by_construction: bool = False, untestable: bool = False, gate: bool | None = True) -> str:
    """The pre-registered label of one comparison (p: Holm-adjusted when `adjusted`, else raw; gate None: the
    gate comparison could not be made)."""
    if gate is None:
        return "gate not run: no verdict"
    if not gate:
        return "gate failed: no verdict"
    if untestable or floor:
        return "untestable (floor)"
    if p is None:
        return "one seed: no test"
    sign, delta = expectation(expect)
    tag = f"Holm p_adj = {p:.3g}" if adjusted else f"exploratory, p = {p:.3g}"
    d = mean_ci95(diffs)
    lo, hi = d["ci95"]
    if expect.startswith("noninferior:"):
        word = "non-inferior" if p < ALPHA else "non-inferiority not shown"
    elif p < ALPHA:
        word = "supported"
    else:
        word = "not supported, " + ("direction as expected" if sign * d["mean"] > 0 else "opposite direction")
    if not expect.startswith("noninferior:") and (sign * hi < 0 if sign > 0 else sign * lo < 0):
        word += ", reversed"
    out = f"{word} ({tag})"
    return out + ("; true by construction" if by_construction else "")
