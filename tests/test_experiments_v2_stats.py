"""Study v2's decision statistics against independent references: SciPy's own t-test (scipy.stats.ttest_1samp)
for the one-sided p-values, and Holm's procedure written independently below (rejection by the step-down rule,
then the smallest alpha at which each hypothesis is rejected), plus a worked example by hand."""

import numpy as np
import pytest
from scipy import stats as sps

from xllava_jax.experiments.v2 import stats


def holm_reference(p, alphas=np.linspace(0.0005, 1.0, 2000)):
    """Smallest alpha on a fine grid at which Holm's step-down test rejects each hypothesis."""
    p = np.asarray(p, float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    out = np.ones(m)
    for alpha in alphas[::-1]:
        rejected = np.zeros(m, bool)
        for k, i in enumerate(order):
            if p[i] <= alpha / (m - k):
                rejected[i] = True
            else:
                break
        out[rejected] = alpha
    return out


def test_holm_worked_example_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005=0.02, 3*0.01=0.03, 2*0.03=0.06, max(0.06, 1*0.04)=0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


@pytest.mark.parametrize("seed", range(5))
def test_holm_matches_step_down_rejections(seed):
    p = np.random.default_rng(seed).uniform(0, 0.3, 6)
    ours = np.array(stats.holm(list(p)))
    ref = holm_reference(p)
    grid = 1.0 / 2000
    assert np.all(ours <= ref + 1e-12) and np.all(ref - ours <= grid + 1e-12)


@pytest.mark.parametrize("expect,alternative,popmean", [(">", "greater", 0.0), ("<", "less", 0.0),
                                                        ("noninferior:0.05", "greater", -0.05)])
def test_one_sided_p_matches_scipy(expect, alternative, popmean):
    d = [0.04, -0.01, 0.07, 0.02, 0.00, 0.05, -0.03, 0.06]
    ref = sps.ttest_1samp(d, popmean, alternative=alternative).pvalue
    assert stats.one_sided_p(d, expect) == pytest.approx(ref, rel=1e-9)


def test_one_sided_p_degenerate():
    assert stats.one_sided_p([0.1], ">") is None
    assert stats.one_sided_p([0.1, 0.1], ">") == 0.0 and stats.one_sided_p([0.0, 0.0], ">") == 1.0


def test_clipping_and_floor():
    m = {"values": [0.0, 0.02], "mean": 0.01, "ci95": [-0.12, 0.14]}
    assert stats.clipped(m, 0.0, 1.0)["ci95"] == [0.0, 0.14]
    assert stats.difference([1.0, 0.0], [0.0, 1.0], "acc_ko")["ci95"][0] >= -1.0
    assert stats.at_floor([0.0, 0.0], [0.0, 0.0], "acc_ko_fruit_text")
    assert not stats.at_floor([0.0, 0.01], [0.0, 0.0], "acc_ko")
    assert not stats.at_floor([0.0, 0.0], [0.0, 0.0], "lo_ko")  # unbounded metric: no floor


def test_gate():
    assert stats.gate_passes([0.2, 0.18, 0.25], 0.15)
    assert not stats.gate_passes([0.12, 0.13, 0.14], 0.15)  # significant but below the declared effect
    assert not stats.gate_passes([0.5, -0.2, 0.3], 0.15)  # large mean, p above 0.05


def test_verdict_labels():
    v = lambda *a, **k: stats.verdict(*a, **k)  # noqa: E731
    assert v(">", [0.1, 0.2], 0.01, adjusted=True) == "supported (Holm p_adj = 0.01)"
    assert v(">", [0.1, 0.2], 0.01, adjusted=True, gate=False) == "gate failed: no verdict"
    assert v(">", [0.0, 0.0], 1.0, adjusted=True, floor=True) == "untestable (floor)"
    assert v(">", [-0.1, -0.12, -0.11], 0.99, adjusted=False).startswith("not supported, opposite direction, reversed")
    assert v("<", [-2.3, -2.3], 0.0, adjusted=False, by_construction=True).endswith("true by construction")
    assert v("noninferior:0.05", [0.0, 0.01], 0.02, adjusted=True).startswith("non-inferior")
