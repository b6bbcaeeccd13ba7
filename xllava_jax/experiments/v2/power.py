"""The power analysis of docs/experiments/v2/DESIGN.md from v1's per-seed values:

    python -m xllava_jax.experiments.v2.power [docs/experiments/results.json]

prints sd of v1's paired differences, their pooled sd, and the minimum detectable difference (one-sided paired
t-test, power 0.8, exact noncentral t) for 3 and 8 seeds at alpha 0.05 and 0.05/6 (Holm's first step)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

V1_COMPARISONS = (  # (suite, metric, a, b): v1's comparisons behind v2's primary family
    ("xllava_table2", "acc_ko", "X-LLaVA", "X-LLaVA(-V,-P)"),
    ("xllava_table2", "acc_ko", "X-LLaVA + O", "X-LLaVA"),
    ("xllava_table2", "acc_en", "X-LLaVA", "X-LLaVA(-V,-P)"),
    ("xllava_table2", "acc_ko", "X-LLaVA(-V,-P) + O", "X-LLaVA(-V,-P)"),
    ("xllava_table2", "acc_ko", "X-LLaVA", "X-LLaVA(-P)"),
    ("lrm_table3", "acc_non_en", "LRM-LLaVA", "w/o All Task Instructions"),
    ("lrm_table3", "acc_en", "LRM-LLaVA", "w/o All Task Instructions"),
)


def power(effect: float, sd: float, n: int, alpha: float) -> float:
    """Power of the one-sided paired t-test (df n - 1) at a true mean difference `effect`."""
    from scipy import stats
    df = n - 1
    return float(stats.nct.sf(stats.t.isf(alpha, df), df, effect / (sd / math.sqrt(n))))


def mdd(sd: float, n: int, alpha: float, target: float = 0.8) -> float:
    """The smallest true difference detected with power `target` (bisection on `power`)."""
    lo, hi = 0.0, 100.0 * sd
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if power(mid, sd, n, alpha) < target else (lo, mid)
    return hi


def v1_sds(results: dict) -> list[tuple[str, list[float], float]]:
    """(label, differences in points, sd) of each v1 comparison."""
    out = []
    for suite, metric, a, b in V1_COMPARISONS:
        va, vb = (results[suite][x]["metrics"][metric]["values"] for x in (a, b))
        d = [100 * (x - y) for x, y in zip(va, vb)]
        m = sum(d) / len(d)
        out.append((f"{metric} {a} - {b}", d, math.sqrt(sum((x - m) ** 2 for x in d) / (len(d) - 1))))
    return out


def main(path: str = "docs/experiments/results.json") -> None:
    """Print the analysis."""
    rows = v1_sds(json.loads(Path(path).read_text()))
    for label, d, sd in rows:
        print(f"{label:55s} d = {', '.join(f'{x:.1f}' for x in d):20s} sd {sd:.1f}")
    pooled = math.sqrt(sum(sd ** 2 for *_, sd in rows) / len(rows))
    print(f"pooled sd {pooled:.2f}")
    for n in (3, 8):
        for alpha in (0.05, 0.05 / 6):
            print(f"n={n} alpha={alpha:.4f}: MDD {mdd(pooled, n, alpha):.1f} (sd 5: {mdd(5, n, alpha):.1f}, "
                  f"sd 3: {mdd(3, n, alpha):.1f})")
    need = next(n for n in range(3, 500) if mdd(pooled, n, 0.05 / 6) <= 5)
    print(f"seeds to resolve 5 points at alpha/6 with sd {pooled:.1f}: {need}")


if __name__ == "__main__":
    main(*sys.argv[1:])
