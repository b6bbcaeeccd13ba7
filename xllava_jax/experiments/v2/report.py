"""Study v2's report: the gate, the primary family (Holm), the exploratory comparisons, the arms' table with
intervals clipped to each metric's range, baselines, the ViT probe and the plots (DIR/report.md, DIR/*.png)."""

from __future__ import annotations

from pathlib import Path

from xllava_jax.experiments import plots
from xllava_jax.experiments.report import DETAILS, REPORT, RESULTS, _load, fmt
from xllava_jax.experiments.v2 import stats

SUITE = "v2"
NI = "noninferior:0.05"
GATE = ("G", "the gate: five times the Korean records", "acc_ko", "gate: X-LLaVA + 5xKO", "X-LLaVA", ">")
PRIMARY = (
    ("P1", "expansion + stage 0 help Korean (X-LLaVA)", "acc_ko", "X-LLaVA", "X-LLaVA(-V,-P)", ">"),
    ("P2", "Korean knowledge from stage-0 text reaches visual answers (b = 0 by construction)", "acc_ko_fruit_text",
     "X-LLaVA", "X-LLaVA(-V,-P)", ">"),
    ("P3", "+O helps Korean (X-LLaVA)", "acc_ko", "X-LLaVA + O", "X-LLaVA", ">"),
    ("P4", "English kept (X-LLaVA)", "acc_en", "X-LLaVA", "X-LLaVA(-V,-P)", NI),
    ("P5", "task instructions help non-English (LRM-LLaVA)", "acc_non_en", "LRM-LLaVA", "X-LLaVA", ">"),
    ("P6", "English not hurt by task instructions (LRM-LLaVA)", "acc_en", "LRM-LLaVA", "X-LLaVA", NI),
)
EXPLORATORY = (
    ("E1", "P1 on the log-odds", "lo_ko", "X-LLaVA", "X-LLaVA(-V,-P)", ">"),
    ("E2", "P3 on the log-odds", "lo_ko", "X-LLaVA + O", "X-LLaVA", ">"),
    ("E3", "P5 on the log-odds", "lo_non_en", "LRM-LLaVA", "X-LLaVA", ">"),
    ("E4", "composition via English data", "acc_ko_comp", "X-LLaVA", "X-LLaVA(-V,-P)", ">"),
    ("E5", "expansion alone", "acc_ko", "X-LLaVA(-P)", "X-LLaVA(-V,-P)", ">"),
    ("E6", "stage 0 alone", "acc_ko", "X-LLaVA", "X-LLaVA(-P)", ">"),
    ("E7", "+O without expansion", "acc_ko", "X-LLaVA(-V,-P) + O", "X-LLaVA(-V,-P)", ">"),
    ("E8", "stage-0 text is a route to Korean position", "acc_ko_position", "X-LLaVA", "X-LLaVA(-P)", ">"),
    ("E9", "expansion shortens Korean", "tokens_per_char_ko", "X-LLaVA", "X-LLaVA(-V,-P)", "<"),
    ("E10", "expansion's efficiency", "train_chars_per_s", "X-LLaVA", "X-LLaVA(-V,-P)", ">"),
    ("E11", "MVQA in pre-training", "acc_non_en", "LRM-LLaVA", "w/o MVQA Instruction (Pre-training)", ">"),
    ("E12", "MVQA in fine-tuning", "acc_non_en", "LRM-LLaVA", "w/o MVQA Instruction (Fine-tuning)", ">"),
    ("E13", "EP-VQA", "acc_non_en", "LRM-LLaVA", "w/o EP-VQA Instruction", ">"),
    ("E14", "BVQA", "acc_non_en", "LRM-LLaVA", "w/o BVQA Instruction", ">"),
    ("E15", "volume 100% vs 40%", "acc_non_en", "LRM-LLaVA", "LRM 40%", ">"),
    ("E16", "English drops at 150%", "acc_en", "LRM 150%", "LRM-LLaVA", "<"),
    ("E17", "task instructions close the modality gap", "modality_gap", "LRM-LLaVA", "X-LLaVA", "<"),
    ("E18", "consistency loss closes the gap (our extension)", "modality_gap", "LLaVA + cons", "X-LLaVA", "<"),
    ("E19", "consistency loss costs no accuracy (our extension)", "acc_non_en", "LRM-LLaVA + cons", "LRM-LLaVA", NI),
)
BY_CONSTRUCTION = {"E9"}  # tokenizers are fixed by the world, not trained
COLUMNS = ("acc_en", "acc_ko", "acc_zh", "acc_non_en", "acc_ko_position", "acc_ko_fruit_text", "acc_ko_comp",
           "lo_ko", "lo_non_en", "tokens_per_char_ko", "modality_gap")


def paired(arms: dict, metric: str, a: str, b: str) -> tuple[list[float], list[float]] | None:
    """Per-seed values of a and b on their common seeds (None when an arm or the metric is missing)."""
    if a not in arms or b not in arms:
        return None
    ma, mb = arms[a]["metrics"].get(metric), arms[b]["metrics"].get(metric)
    if ma is None or mb is None:
        return None
    seeds = sorted(set(arms[a]["seeds"]) & set(arms[b]["seeds"]))
    return ([ma["values"][arms[a]["seeds"].index(s)] for s in seeds],
            [mb["values"][arms[b]["seeds"].index(s)] for s in seeds])


def row(h: tuple, arms: dict) -> dict | None:
    """One comparison's numbers: differences, interval, sd, raw p, floor flag."""
    hid, claim, metric, a, b, expect = h
    got = paired(arms, metric, a, b)
    if got is None:
        return None
    va, vb = got
    diffs = [x - y for x, y in zip(va, vb)]
    d = stats.difference(va, vb, metric)
    sd = (sum((x - d["mean"]) ** 2 for x in diffs) / (len(diffs) - 1)) ** 0.5 if len(diffs) > 1 else None
    return {"id": hid, "claim": claim, "metric": metric, "a": a, "b": b, "expect": expect, "diffs": diffs,
            "difference": d, "sd": sd, "n": len(diffs), "p": stats.one_sided_p(diffs, expect),
            "floor": stats.at_floor(va, vb, metric)}


def gate_outcome(arms: dict, effect: float) -> tuple[dict | None, bool | None]:
    """(gate row, passed): passed None when the gate arms or a second seed are missing."""
    r = row(GATE, arms)
    if r is None or r["n"] < 2:
        return r, None
    return r, stats.gate_passes(r["diffs"], effect)


def comparisons(arms: dict, untestable: tuple[str, ...] = (), gate_effect: float = 0.15) -> dict:
    """{"gate": row, "gate_passed", "primary": rows with Holm, "exploratory": rows}, verdicts included."""
    gate, passed = gate_outcome(arms, gate_effect)
    primary = [r for r in (row(h, arms) for h in PRIMARY) if r is not None]
    for r in primary:
        r["untestable"] = r["id"] in untestable
    testable = [r["p"] for r in primary]
    if primary and all(p is not None for p in testable):
        # untestable / floor comparisons stay in the family with p = 1 (the family size is fixed in advance)
        adjusted = stats.holm([1.0 if r["untestable"] or r["floor"] else r["p"] for r in primary])
    else:
        adjusted = [None] * len(primary)
    for r, q in zip(primary, adjusted):
        r["p_adj"] = q
        r["verdict"] = stats.verdict(r["expect"], r["diffs"], q, adjusted=True, floor=r["floor"],
                                     untestable=r["untestable"], gate=passed)
    exploratory = [r for r in (row(h, arms) for h in EXPLORATORY) if r is not None]
    for r in exploratory:
        r["verdict"] = stats.verdict(r["expect"], r["diffs"], r["p"], adjusted=False, floor=r["floor"],
                                     by_construction=r["id"] in BY_CONSTRUCTION, gate=passed)
    return {"gate": gate, "gate_passed": passed, "primary": primary, "exploratory": exploratory}


def _num(x: float | None, scale: float = 1.0) -> str:
    """A number or n/a."""
    return "n/a" if x is None else f"{scale * x:.3g}"


def comparison_table(rows: list[dict], with_holm: bool) -> list[str]:
    """Markdown rows of comparisons: d = a - b (points for accuracies) with its clipped 95% interval."""
    head = ["id", "claim", "metric", "a", "b", "expected", "a - b [95% CI]", "sd(d)", "n", "p"]
    head += ["p (Holm)"] if with_holm else []
    lines = ["| " + " | ".join(head + ["verdict"]) + " |", "|" + "---|" * (len(head) + 1)]
    for r in rows:
        pct = r["metric"].startswith(("acc_", "fc_"))
        cells = [r["id"], r["claim"], r["metric"], r["a"], r["b"], r["expect"], fmt(r["difference"], pct=pct),
                 _num(r["sd"], 100.0 if pct else 1.0), str(r["n"]), _num(r["p"])]
        cells += [_num(r.get("p_adj"))] if with_holm else []
        lines.append("| " + " | ".join(cells + [r["verdict"]]) + " |")
    return lines


def arms_table(arms: dict, baselines: dict) -> list[str]:
    """Markdown table of every arm: mean [95% CI clipped to the metric's range] per column, then baselines."""
    head = ["arm", "seeds", *COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, e in arms.items():
        cells = [name, str(len(e["seeds"]))]
        for m in COLUMNS:
            v = e["metrics"].get(m)
            cells.append(fmt(stats.clipped(v, *stats.metric_range(m)) if v else None, pct=m.startswith("acc")))
        lines.append("| " + " | ".join(cells) + " |")
    for label, key in (("chance (uniform per question kind)", "chance"),
                       ("text-only (most common training answer per kind and language)", "text_only")):
        b = baselines.get(key, {})
        cells = [label, ""] + [f"{100 * b[m]:.1f}" if m in b else "" for m in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_report(out: Path) -> Path:
    """DIR/report.md and plots from DIR/results.json and DIR/details.json of a v2 run."""
    out = Path(out)
    arms = _load(out / RESULTS).get(SUITE, {})
    details = _load(out / DETAILS).get(SUITE, {})
    comp = comparisons(arms, tuple(details.get("untestable", ())), details.get("gate_effect", 0.15))
    gate, passed = comp["gate"], comp["gate_passed"]
    lines = ["# Study v2: the papers' mechanisms in miniature", "",
             "Pre-registration: docs/experiments/v2/DESIGN.md. Accuracies in %, mean over seeds with a 95% "
             "Student-t interval (clipped to [0, 100]; differences to [-100, 100]). A 64-wide, 2-layer LLaVA on a "
             "synthetic world: compare directions with the papers, not values.", ""]
    if details.get("quick"):
        lines += ["**--quick run: plumbing only; no claims.**", ""]
    word = {None: "not run (an arm or a second seed is missing)", True: "**passed**",
            False: "**failed: no verdicts are given**"}[passed]
    lines += ["## Gate", "", f"acc_ko, gate: X-LLaVA + 5xKO - X-LLaVA: "
              f"{fmt(gate['difference']) if gate else 'n/a'} (pre-declared: >= 15 points, one-sided p < 0.05): {word}",
              ""]
    lines += ["## Primary family (Holm over 6, one-sided paired t-tests)", ""]
    lines += comparison_table(comp["primary"], True) + [""]
    lines += ["## Exploratory comparisons (unadjusted)", ""]
    lines += comparison_table(comp["exploratory"], False) + [""]
    lines += ["## Arms", ""] + arms_table(arms, details.get("baselines", {})) + [""]
    if arms:
        png = plots.bars(arms, ("acc_en", "acc_ko", "acc_non_en"), details.get("baselines"), "study v2",
                         out / "v2_accuracy.png", ylabel="accuracy (fresh in-distribution scenes)")
        lines += [f"![study v2]({png.name})", ""]
    if details.get("vit_probe"):
        lines += ["Frozen ViT, probe accuracy on fresh scenes: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in details["vit_probe"].items()), ""]
    secs = details.get("seconds", {})
    if secs:
        lines += [f"Seconds per arm and seed (stages reused count 0), total {sum(secs.values()):.0f}: "
                  + ", ".join(f"{k} {v:.0f}" for k, v in secs.items()), ""]
    path = out / REPORT
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
