"""Seed statistics without SciPy: mean and a two-sided 95% Student-t interval over seeds."""

from __future__ import annotations

import math
from typing import Sequence

# two-sided 95% critical values t_{0.975, df} (standard tables), df = 1..30
T975 = (12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252, 2.306004135,
        2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688, 2.131449546, 2.119905299,
        2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845, 2.073873068, 2.068657610, 2.063898562,
        2.059538553, 2.055529439, 2.051830516, 2.048407142, 2.045229642, 2.042272456)
Z975 = 1.959963985


def t_critical(df: int) -> float:
    """t_{0.975, df}: the table for df <= 30, beyond it the Cornish-Fisher expansion around z (error < 1e-5)."""
    if df < 1:
        raise ValueError(f"t_critical needs df >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3


def mean_ci95(values: Sequence[float]) -> dict:
    """{"values", "mean", "ci95": [lo, hi]}: the t-interval mean +- t_{0.975,n-1} s / sqrt(n) (s: sample sd,
    n - 1 denominator); with one value (or none) the interval is [mean, mean] (no spread to estimate)."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return {"values": [], "mean": None, "ci95": [None, None]}
    mean = sum(vals) / n
    if n == 1:
        return {"values": vals, "mean": mean, "ci95": [mean, mean]}
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = t_critical(n - 1) * sd / math.sqrt(n)
    return {"values": vals, "mean": mean, "ci95": [mean - half, mean + half]}


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict:
    """mean_ci95 of a - b paired by seed (the pre-registered comparisons use this)."""
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} vs {len(b)} seeds")
    return mean_ci95([x - y for x, y in zip(a, b)])
