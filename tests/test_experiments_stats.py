"""Experiments statistics and report pieces against hand computations (no NumPy/SciPy in the expectations)."""

import math

import pytest

from xllava_jax.experiments import report, stats


def test_t_interval_three_values_by_hand():
    # [1, 2, 3]: mean 2, s = 1, t_{0.975,2} = 4.302652730 (table), half = 4.302652730 / sqrt(3) = 2.484138
    m = stats.mean_ci95([1.0, 2.0, 3.0])
    assert m["mean"] == pytest.approx(2.0)
    assert m["ci95"] == pytest.approx([2.0 - 2.4841377, 2.0 + 2.4841377], abs=1e-6)
    assert m["values"] == [1.0, 2.0, 3.0]


def test_t_interval_four_values_by_hand():
    # mean 0.675; squared deviations sum 0.0875; s^2 = 0.0875 / 3; se = s / 2 = 0.0853913; t3 = 3.182446305
    m = stats.mean_ci95([0.5, 0.7, 0.6, 0.9])
    half = 3.182446305 * math.sqrt(0.0875 / 3) / 2
    assert half == pytest.approx(0.2717531, abs=1e-6)
    assert m["ci95"] == pytest.approx([0.675 - half, 0.675 + half], abs=1e-9)


def test_one_value_has_no_spread_and_empty_is_none():
    assert stats.mean_ci95([0.4]) == {"values": [0.4], "mean": 0.4, "ci95": [0.4, 0.4]}
    assert stats.mean_ci95([])["mean"] is None


@pytest.mark.parametrize("df,table", [(1, 12.7062), (2, 4.3027), (10, 2.2281), (30, 2.0423), (40, 2.0211),
                                      (60, 2.0003), (120, 1.9799)])
def test_t_critical_matches_printed_tables(df, table):
    assert stats.t_critical(df) == pytest.approx(table, abs=1e-4)


def test_paired_difference_is_by_seed():
    d = stats.paired_difference([0.6, 0.7, 0.8], [0.5, 0.5, 0.5])  # differences 0.1, 0.2, 0.3: mean 0.2, s 0.1
    assert d["mean"] == pytest.approx(0.2)
    assert d["ci95"] == pytest.approx([0.2 - 0.24841377, 0.2 + 0.24841377], abs=1e-7)
    with pytest.raises(ValueError):
        stats.paired_difference([1.0], [1.0, 2.0])


@pytest.mark.parametrize("expect,values,word", [
    # [0.2, 0.21, 0.22]: mean 0.21, half = 4.3027 * 0.01 / sqrt(3) = 0.0248: interval [0.185, 0.235]
    (">", [0.2, 0.21, 0.22], "reproduced"), (">", [0.1, 0.2, 0.3], "same direction"),
    (">", [-0.2, -0.21, -0.22], "opposite, interval excludes 0"), ("<", [-0.2, -0.21, -0.22], "reproduced"),
    ("<", [0.2, 0.21, 0.22], "opposite, interval excludes 0"), ("<", [0.1, 0.2, 0.3], "opposite direction"), ("noninferior:0.05", [0.0, 0.01, -0.01], "holds"),
    ("noninferior:0.05", [0.0, -0.2, 0.1], "not shown"), (">", [0.2], "one seed"),
    # paired accuracy differences that cancel: their float mean is -1.85e-17, not a direction
    (">", [0.0125, -0.00625 - 0.00625, 0.0 - 1.85e-17 * 3], "no difference")])
def test_verdicts(expect, values, word):
    assert report.verdict(expect, stats.mean_ci95(values)).startswith(word)


def test_summarize_schema_and_comparisons():
    run = {"arms": {a: {"seeds": [0, 1, 2], "per_seed": [{"metrics": {"acc_ko": v, "acc_en": 0.5}} for v in vals]}
                    for a, vals in (("X-LLaVA", (0.7, 0.71, 0.72)), ("X-LLaVA(-V,-P)", (0.5, 0.5, 0.5)))}}
    s = report.summarize(run)
    assert set(s["X-LLaVA"]) == {"seeds", "metrics"}
    assert s["X-LLaVA"]["metrics"]["acc_ko"]["mean"] == pytest.approx(0.71)
    assert set(s["X-LLaVA"]["metrics"]["acc_ko"]) == {"values", "mean", "ci95"}
    comp = {c["id"]: c for c in report.comparisons({"xllava_table2": s})}
    assert comp["H1"]["difference"]["mean"] == pytest.approx(0.21)
    assert comp["H1"]["verdict"].startswith("reproduced")


def test_table_formats_percent_with_interval():
    assert report.fmt(stats.mean_ci95([0.1, 0.2, 0.3])) == "20.0 [-4.8, 44.8]"
    lines = report.suite_table("lrm_table3", report.summarize(
        {"arms": {"LRM-LLaVA": {"seeds": [0], "per_seed": [{"metrics": {"acc_en": 0.5, "acc_non_en": 0.25}}]}}}),
        {"chance": {"acc_en": 0.25, "acc_non_en": 0.25}, "text_only": {"acc_en": 0.1}})
    assert lines[2] == "| LRM-LLaVA | 1 | 50.0 | 25.0 | 70.1 | 66.1 |"
    assert lines[3].startswith("| chance") and "25.0" in lines[3]
    assert lines[4].startswith("| text-only") and "10.0" in lines[4]
