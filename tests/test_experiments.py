"""CI: `python -m xllava_jax.experiments run --suite all --quick` end to end (all four suites' plumbing: every
arm built and trained a handful of steps, evaluated, report and plots written). SLOW-ISH: ~2 minutes on an
idle 2-core CPU (the JAX compilation cache makes most stages reuse a compiled program). No claims are checked."""

import pytest
import json
import os
import subprocess
import sys

from xllava_jax.experiments import config, report, suites

EXPECTED_METRICS = {"acc_en", "acc_ko", "acc_zh", "acc_non_en", "acc_ko_fruit", "tokens_per_char_ko",
                    "train_chars_per_s", "modality_gap", "train_seconds"}


@pytest.mark.slow
def test_quick_run_all_suites(tmp_path):
    out = tmp_path / "exp"
    run_experiments("run", "--suite", "all", "--quick", "--out", str(out))
    check_quick_output(out)


def run_experiments(*args: str) -> None:
    """`python -m xllava_jax.experiments ARGS` on the CPU in a subprocess; fails with its stderr's tail."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "xllava_jax.experiments", *args], env=env, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]


def check_quick_output(out):
    """results.json structure, every table and plot in report.md, equal steps and shared checkpoints."""
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert set(results) == set(config.SUITES)
    for suite, arms in results.items():
        c = config.apply_quick(config.suite_config(suite))
        if suite == "lrm_fig6":
            c.ratios = (0.4, 0.7, 1.0, 1.5)
        assert list(arms) == [a.name for a in suites.suite_arms(c)], suite
        for arm, entry in arms.items():
            assert entry["seeds"] == [0]
            assert EXPECTED_METRICS <= set(entry["metrics"]), (suite, arm)
            for m in entry["metrics"].values():
                assert set(m) == {"values", "mean", "ci95"} and len(m["values"]) == 1
                assert m["ci95"] == [m["mean"], m["mean"]]
    text = (out / "report.md").read_text(encoding="utf-8")
    for suite in config.SUITES:
        assert f"## {suite}" in text
        head = "| arm | seeds | " + " | ".join(h for _, h in report.COLUMNS[suite])
        assert head in text, suite
        for arm in results[suite]:
            assert f"| {arm} | 1 |" in text
    assert text.count("| chance (uniform per question kind) |") == 4
    assert text.count("| text-only (most common training answer per kind and language) |") == 4
    assert text.count("| held-out majority (the eval set's own most common answer") == 4
    assert "## Pre-registered comparisons" in text and "| H19 |" in text
    assert "--quick run: plumbing only" in text
    for png in ("xllava_table2.png", "lrm_table3.png", "lrm_fig6.png", "lrm_fig5.png", "lrm_fig5_gap.png",
                "lrm_fig5_features.png"):
        assert (out / png).stat().st_size > 1000, png
        assert f"]({png})" in text
    details = json.loads((out / "details.json").read_text(encoding="utf-8"))
    stage2 = {a: e["per_seed"][0]["stages"] for a, e in details["xllava_table2"]["arms"].items()}
    assert len({s["stage2"]["steps"] for s in stage2.values()}) == 1  # equal steps
    assert len({s["stage2"]["row_tokens"] for s in stage2.values()}) == 1  # equal row tokens
    shared = details["lrm_table3"]["arms"]["w/o All Task Instructions"]["per_seed"][0]["stages"]
    assert shared["stage2"]["key"] == stage2["X-LLaVA"]["stage2"]["key"]  # one checkpoint for both suites
