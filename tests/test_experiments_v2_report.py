"""Study v2's report wiring on synthetic per-seed values: the gate decides whether verdicts are given, the
primary family is Holm-adjusted over its six comparisons (declared-untestable ones at p = 1), the tables render."""

from xllava_jax.experiments.stats import mean_ci95
from xllava_jax.experiments.v2 import report, stats

ARMS = ("X-LLaVA(-V,-P)", "X-LLaVA", "X-LLaVA + O", "gate: X-LLaVA + 5xKO", "LRM-LLaVA")


def arms_with(gate_gain):
    """Eight seeds of every primary arm; the gate arm's acc_ko is X-LLaVA's + gate_gain."""
    seeds = list(range(8))
    noise = [0.01 * ((3 * s) % 5 - 2) for s in seeds]
    base = {"acc_ko": 0.5, "acc_en": 0.8, "acc_non_en": 0.5, "acc_ko_fruit_text": 0.0}
    shift = {"X-LLaVA(-V,-P)": -0.2, "X-LLaVA": 0.0, "X-LLaVA + O": 0.05, "gate: X-LLaVA + 5xKO": gate_gain,
             "LRM-LLaVA": 0.03}
    out = {}
    for k, arm in enumerate(ARMS):
        metrics = {}
        for m, v in base.items():
            vals = [0.0] * 8 if m == "acc_ko_fruit_text" else \
                [v + (shift[arm] if m == "acc_ko" else 0.0) + (k + 1) * n / 3 for n in noise]
            metrics[m] = mean_ci95(vals)
        out[arm] = {"seeds": seeds, "metrics": metrics}
    return out


def test_gate_passed_gives_holm_verdicts():
    comp = report.comparisons(arms_with(0.2), untestable=("P2",))
    assert comp["gate_passed"] is True
    rows = {r["id"]: r for r in comp["primary"]}
    assert set(rows) == {"P1", "P2", "P3", "P4", "P5", "P6"}
    raw = [1.0 if r["id"] == "P2" else r["p"] for r in comp["primary"]]
    assert [r["p_adj"] for r in comp["primary"]] == stats.holm(raw)
    assert rows["P2"]["verdict"] == "untestable (floor)"
    assert rows["P1"]["verdict"].startswith("supported (Holm p_adj")
    assert all("exploratory" in r["verdict"] or "untestable" in r["verdict"] for r in comp["exploratory"])


def test_gate_failed_withholds_verdicts():
    comp = report.comparisons(arms_with(0.08))
    assert comp["gate_passed"] is False
    assert all(r["verdict"] == "gate failed: no verdict" for r in comp["primary"])
    lines = report.comparison_table(comp["primary"], True)
    assert len(lines) == 2 + 6 and "p (Holm)" in lines[0]
