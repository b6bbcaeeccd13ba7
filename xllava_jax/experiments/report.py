"""DIR/results.json ({suite: {arm: {"seeds", "metrics": {name: {"values", "mean", "ci95"}}}}}), DIR/details.json
(baselines, per-seed bookkeeping, times), the pre-registered comparisons, DIR/report.md and DIR/*.png."""

from __future__ import annotations

import json
from pathlib import Path


from xllava_jax.experiments.stats import mean_ci95, paired_difference

RESULTS = "results.json"
DETAILS = "details.json"
REPORT = "report.md"

# Published numbers (accuracy %), for the layout only: a 13B model on real benchmarks, not our scale.
PAPER = {
    "xllava_table2": {  # X-LLaVA Table 2: BVQA^k (Korean), BVQA^e (English), GQA (English)
        "columns": ("BVQA^k", "BVQA^e", "GQA"),
        "rows": {"X-LLaVA(-V,-P)": (51.5, 33.0, 62.3), "X-LLaVA(-V,-P) + O": (51.9, 36.0, 61.9),
                 "X-LLaVA(-P)": (56.4, 32.0, 62.1), "X-LLaVA(-P) + O": (56.6, 32.3, 62.5),
                 "X-LLaVA": (57.6, 33.5, 63.3), "X-LLaVA + O": (57.9, 34.3, 64.0)}},
    "lrm_table3": {  # LRM-LLaVA Table 3: multilingual MMBench, English and the 9 non-English languages' mean
        "columns": ("En", "Avg"),
        "rows": {"w/o All Task Instructions": (70.2, 61.6), "w/o MVQA Instruction (Pre-training)": (69.8, 65.0),
                 "w/o MVQA Instruction (Fine-tuning)": (69.6, 63.8), "w/o EP-VQA Instruction": (70.0, 63.9),
                 "w/o BVQA Instruction": (69.6, 65.2), "LRM-LLaVA": (70.1, 66.1)}},
    "lrm_fig6": {"columns": (), "rows": {}, "note": "Figure 6 is published as a plot only: 100% non-English "
                 "clearly beats 40% and 70%; 150% adds no non-English gain and lowers English."},
    "lrm_fig5": {"columns": (), "rows": {}, "note": "Figure 5 is qualitative (t-SNE + KDE of 5,000 points): the "
                 "image and multilingual text distributions overlap more for LRM-LLaVA than for LLaVA."},
}

# The pre-registered comparisons (docs/experiments/DESIGN.md): (id, suite, metric, arm a, arm b, expectation),
# expectation '>' (a - b > 0), '<' (a - b < 0) or 'noninferior:<margin>' (a - b > -margin).
HYPOTHESES = (
    ("H1", "xllava_table2", "acc_ko", "X-LLaVA", "X-LLaVA(-V,-P)", ">"),
    ("H2", "xllava_table2", "acc_ko", "X-LLaVA", "X-LLaVA(-P)", ">"),
    ("H3", "xllava_table2", "acc_ko_fruit", "X-LLaVA", "X-LLaVA(-P)", ">"),
    ("H4", "xllava_table2", "acc_en", "X-LLaVA", "X-LLaVA(-V,-P)", "noninferior:0.05"),
    ("H5", "xllava_table2", "acc_ko", "X-LLaVA + O", "X-LLaVA", ">"),
    ("H6", "xllava_table2", "acc_ko", "X-LLaVA(-V,-P) + O", "X-LLaVA(-V,-P)", ">"),
    ("H7", "xllava_table2", "tokens_per_char_ko", "X-LLaVA", "X-LLaVA(-V,-P)", "<"),
    ("H8", "xllava_table2", "train_chars_per_s", "X-LLaVA", "X-LLaVA(-V,-P)", ">"),
    ("H9", "lrm_table3", "acc_non_en", "LRM-LLaVA", "w/o All Task Instructions", ">"),
    ("H10", "lrm_table3", "acc_en", "LRM-LLaVA", "w/o All Task Instructions", "noninferior:0.05"),
    ("H11", "lrm_table3", "acc_non_en", "LRM-LLaVA", "w/o MVQA Instruction (Pre-training)", ">"),
    ("H12", "lrm_table3", "acc_non_en", "LRM-LLaVA", "w/o MVQA Instruction (Fine-tuning)", ">"),
    ("H13", "lrm_table3", "acc_non_en", "LRM-LLaVA", "w/o EP-VQA Instruction", ">"),
    ("H14", "lrm_table3", "acc_non_en", "LRM-LLaVA", "w/o BVQA Instruction", ">"),
    ("H15", "lrm_fig6", "acc_non_en", "100%", "40%", ">"),
    ("H16", "lrm_fig6", "acc_en", "150%", "100%", "<"),
    ("H17", "lrm_fig5", "modality_gap", "LRM-LLaVA", "LLaVA", "<"),
    ("H18", "lrm_fig5", "modality_gap", "LLaVA + cons", "LLaVA", "<"),
    ("H19", "lrm_fig5", "acc_non_en", "LRM-LLaVA + cons", "LRM-LLaVA", "noninferior:0.05"),
)

COLUMNS = {  # our columns per suite (metric, header)
    "xllava_table2": (("acc_ko", "acc ko"), ("acc_en", "acc en"), ("acc_ko_fruit", "ko knowledge"),
                      ("tokens_per_char_ko", "ko tok/char"), ("train_chars_per_s", "train chars/s")),
    "lrm_table3": (("acc_en", "acc en"), ("acc_non_en", "acc non-en")),
    "lrm_fig6": (("acc_en", "acc en"), ("acc_non_en", "acc non-en")),
    "lrm_fig5": (("modality_gap", "modality gap"), ("modality_cos", "mean cos(v, t)"), ("acc_en", "acc en"),
                 ("acc_non_en", "acc non-en")),
}
BASELINE_METRICS = ("acc_en", "acc_ko", "acc_non_en")


def summarize(run: dict) -> dict:
    """{arm: {"seeds", "metrics": {name: mean_ci95}}} of a run_suite result (metrics every seed has)."""
    out = {}
    for arm, entry in run["arms"].items():
        per_seed = [r["metrics"] for r in entry["per_seed"]]
        names = sorted(set.intersection(*(set(m) for m in per_seed)))
        out[arm] = {"seeds": list(entry["seeds"]), "metrics": {n: mean_ci95([m[n] for m in per_seed]) for n in names}}
    return out


def save(out: Path, suite: str, run: dict) -> dict:
    """Merge one suite's run into DIR/results.json and DIR/details.json; returns all results."""
    results = _load(out / RESULTS)
    results[suite] = summarize(run)
    details = _load(out / DETAILS)
    details[suite] = {"baselines": run["baselines"], "seconds": run["seconds"],
                      "arms": {a: {"recipe": e["arm"], "per_seed": e["per_seed"]} for a, e in run["arms"].items()}}
    (out / RESULTS).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / DETAILS).write_text(json.dumps(details, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return results


def _load(path: Path) -> dict:
    """A JSON file's object ({} when absent)."""
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def fmt(m: dict | None, pct: bool = True) -> str:
    """'mean [lo, hi]' of a mean_ci95 dict (accuracies in %)."""
    if not m or m["mean"] is None:
        return "n/a"
    scale = 100.0 if pct else 1.0
    lo, hi = m["ci95"]
    if len(m["values"]) < 2:
        return f"{scale * m['mean']:.1f}" if pct else f"{m['mean']:.3g}"
    if pct:
        return f"{scale * m['mean']:.1f} [{scale * lo:.1f}, {scale * hi:.1f}]"
    return f"{m['mean']:.3g} [{lo:.3g}, {hi:.3g}]"


def verdict(expect: str, d: dict) -> str:
    """Outcome of a pre-registered comparison from the paired difference's mean and 95% interval."""
    if d["mean"] is None:
        return "not run"
    mean, (lo, hi) = d["mean"], d["ci95"]
    single = len(d["values"]) < 2
    if expect.startswith("noninferior:"):
        margin = float(expect.split(":")[1])
        if single:
            return "one seed: no interval"
        return "holds (lower bound > -margin)" if lo > -margin else "not shown (interval reaches -margin)"
    sign = 1.0 if expect == ">" else -1.0
    if abs(mean) < 1e-9:  # differences of accuracies (multiples of 1/questions) that cancel up to float rounding
        return "no difference"
    if single:
        return "one seed: no interval" + (" (direction as expected)" if sign * mean > 0 else " (direction not as expected)")
    if sign * mean > 0:
        return "reproduced (interval excludes 0)" if sign * (lo if sign > 0 else hi) > 0 else \
            "same direction, interval includes 0"
    return "opposite, interval excludes 0" if sign * (hi if sign > 0 else lo) < 0 else "opposite direction, interval includes 0"


def comparisons(results: dict) -> list[dict]:
    """The pre-registered comparisons over the suites present: paired (by seed) differences a - b."""
    out = []
    for hid, suite, metric, a, b, expect in HYPOTHESES:
        arms = results.get(suite, {})
        if a not in arms or b not in arms:
            continue
        ma, mb = arms[a]["metrics"].get(metric), arms[b]["metrics"].get(metric)
        if ma is None or mb is None:
            continue
        seeds = sorted(set(arms[a]["seeds"]) & set(arms[b]["seeds"]))
        va = [ma["values"][arms[a]["seeds"].index(s)] for s in seeds]
        vb = [mb["values"][arms[b]["seeds"].index(s)] for s in seeds]
        d = paired_difference(va, vb)
        out.append({"id": hid, "suite": suite, "metric": metric, "a": a, "b": b, "expect": expect,
                    "difference": d, "verdict": verdict(expect, d)})
    return out


def suite_table(suite: str, arms: dict, baselines: dict | None) -> list[str]:
    """Markdown table of a suite: our columns (mean [95% CI]) beside the paper's, then chance and text-only rows."""
    cols = COLUMNS[suite]
    paper = PAPER[suite]
    head = ["arm", "seeds"] + [h for _, h in cols] + [f"paper {h}" for h in paper["columns"]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, e in arms.items():
        row = [arm, str(len(e["seeds"]))]
        row += [fmt(e["metrics"].get(m), pct=m.startswith("acc")) for m, _ in cols]
        row += [f"{v:.1f}" for v in paper["rows"].get(arm, ())] or ["" for _ in paper["columns"]]
        row += [""] * (len(head) - len(row))
        lines.append("| " + " | ".join(row) + " |")
    for label, key in (("chance (uniform per question kind)", "chance"),
                       ("text-only (most common training answer per kind and language)", "text_only"),
                       ("held-out majority (the eval set's own most common answer per kind and language: "
                        "an oracle)", "heldout_majority")):
        b = (baselines or {}).get(key, {})
        row = [label, ""] + [f"{100 * b[m]:.1f}" if m in b else "" for m, _ in cols]
        lines.append("| " + " | ".join(row + [""] * (len(head) - len(row))) + " |")
    return lines


def write_report(out: Path) -> Path:
    """DIR/report.md and the plots from DIR/results.json and DIR/details.json."""
    out = Path(out)
    results, details = _load(out / RESULTS), _load(out / DETAILS)
    from xllava_jax.experiments import plots
    lines = ["# The papers' claims in miniature", "",
             "Our numbers: a 64-wide, 2-layer LLaVA on the synthetic world of docs/experiments/DESIGN.md; "
             "accuracy (%) on held-out scenes, mean over seeds with a 95% Student-t interval over seeds "
             "(t_{0.975, n-1} s / sqrt(n)). **The papers' numbers are a 13B model on real benchmarks: a different "
             "scale; compare directions, not values.** Arms of a suite train equal steps with equal batch rows "
             "and row length (equal row tokens).", ""]
    quick = any(details.get(s, {}).get("quick") for s in results)
    if quick:
        lines += ["**--quick run: plumbing only, a handful of steps and one seed; no claims.**", ""]
    for suite, arms in results.items():
        d = details.get(suite, {})
        lines += [f"## {suite}", ""]
        lines += suite_table(suite, arms, d.get("baselines"))
        if PAPER[suite].get("note"):
            lines += ["", f"Paper: {PAPER[suite]['note']}"]
        for png in plots.suite_plots(suite, arms, d, out):
            lines += ["", f"![{suite}]({png.name})"]
        secs = d.get("seconds", {})
        if secs:
            lines += ["", "Seconds per arm and seed (stages reused from other arms count 0): "
                      + ", ".join(f"{k} {v:.0f}" for k, v in secs.items())]
        lines.append("")
    comp = comparisons(results)
    if comp:
        lines += ["## Pre-registered comparisons", "",
                  "Paired by seed: difference a - b, mean [95% t-interval]; decided before the runs "
                  "(docs/experiments/DESIGN.md).", "",
                  "| id | metric | a | b | expected | a - b | outcome |", "|---|---|---|---|---|---|---|"]
        for c in comp:
            lines.append(f"| {c['id']} | {c['metric']} | {c['a']} | {c['b']} | {c['expect']} | "
                         f"{fmt(c['difference'], pct=False)} | {c['verdict']} |")
        lines.append("")
    path = out / REPORT
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def annotate(out: Path, suite: str, **fields) -> None:
    """Add `fields` to a suite's entry of DIR/details.json."""
    details = _load(out / DETAILS)
    details.setdefault(suite, {}).update(fields)
    (out / DETAILS).write_text(json.dumps(details, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def mark_quick(out: Path, suite: str) -> None:
    """Flag a suite's details as a --quick run."""
    annotate(out, suite, quick=True)


