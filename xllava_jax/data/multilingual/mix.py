"""The seeded LRM-LLaVA mix: English MVQA for every record, plus non-English MVQA/EP-VQA/BVQA samples whose
volume is `non_english_ratio` x English (1.0 = English 50%), spread over languages by weight."""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import numpy as np

from xllava_jax.data.multilingual.bvqa import build_bvqa
from xllava_jax.data.multilingual.ep_vqa import build_ep_vqa
from xllava_jax.data.multilingual.mvqa import build_mvqa
from xllava_jax.data.report import DataError

PRETRAIN_TASKS = {"mvqa": 1.0}
FINETUNE_TASKS = {"mvqa": 1.0, "ep_vqa": 1.0, "bvqa": 1.0}


@dataclasses.dataclass(frozen=True)
class TaskMixConfig:
    """Which tasks (relative weights), which languages (relative weights; an `en` weight sets the English
    share when `non_english_ratio` is None), the non-English/English volume ratio, and the seed."""

    tasks: dict = dataclasses.field(default_factory=lambda: dict(FINETUNE_TASKS))
    lang_weights: dict | None = None  # None: non-English languages share equally
    non_english_ratio: float | None = None  # None: from lang_weights["en"], else 1.0
    pivot: str = "en"
    seed: int = 0

    def ratio(self) -> float:
        """Non-English volume / English volume."""
        if self.non_english_ratio is not None:
            return float(self.non_english_ratio)
        w = self.lang_weights or {}
        if self.pivot in w:
            total = sum(w.values())
            if not 0 < w[self.pivot] <= total:
                raise DataError(f"lang_weights[{self.pivot!r}] must be in (0, total]; got {w}")
            return (total - w[self.pivot]) / w[self.pivot]
        return 1.0


def _check(config: TaskMixConfig) -> None:
    """Raise DataError naming a bad setting."""
    unknown = set(config.tasks) - set(FINETUNE_TASKS)
    if unknown or not any(v > 0 for v in config.tasks.values()):
        raise DataError(f"TaskMixConfig.tasks: unknown {sorted(unknown)} or no positive weight in {config.tasks}")
    if config.ratio() < 0:
        raise DataError(f"TaskMixConfig.non_english_ratio must be >= 0, got {config.ratio()}")


def _choose(rng: np.random.Generator, weights: dict, allowed: Sequence[str]) -> str | None:
    """Weighted choice among `allowed` keys of `weights` (uniform when weights is None)."""
    keys = [k for k in allowed if weights is None or weights.get(k, 0) > 0]
    if not keys:
        return None
    p = np.array([1.0 if weights is None else weights[k] for k in keys])
    return keys[rng.choice(len(keys), p=p / p.sum())]


def quota(weights: dict, total: int, rng: np.random.Generator) -> list[str]:
    """`total` keys in exact weight proportions (largest remainder), in seeded random order."""
    keys = [k for k, v in weights.items() if v > 0]
    w = np.array([weights[k] for k in keys], np.float64)
    exact = w / w.sum() * total
    counts = np.floor(exact).astype(int)
    counts[np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]] += 1
    out = [k for k, c in zip(keys, counts) for _ in range(c)]
    return [out[i] for i in rng.permutation(len(out))]


def build_task_mix(records: Sequence[dict], config: TaskMixConfig, verbose: bool = True) -> tuple[list[dict], dict]:
    """(conversation records, summary) from parallel records; deterministic for `config.seed`; prints the summary."""
    _check(config)
    rng = np.random.default_rng(config.seed)
    en = config.pivot
    out = [build_mvqa(r, en) for r in records if en in r["langs"]]
    non_en_weights = None if config.lang_weights is None else {
        k: v for k, v in config.lang_weights.items() if k != en}
    pool = [r for r in records if any(lang != en for lang in r["langs"])]
    target = int(round(config.ratio() * len(out)))
    if target and not pool:
        raise DataError("task mix: non-English volume requested but no record has a non-English language")
    present = sorted({x for r in pool for x in r["langs"] if x != en})
    lang_quota = quota(non_en_weights or {x: 1.0 for x in present}, target, rng) if target else []
    task_quota = quota(config.tasks, target, rng) if target else []
    order: list[int] = []
    for k in range(target):
        if not order:
            order = list(rng.permutation(len(pool)))
        rec = pool[order.pop()]
        lang = lang_quota[k]
        if lang not in rec["langs"]:
            lang = _choose(rng, non_en_weights, [x for x in rec["langs"] if x != en])
            if lang is None:
                continue
        task = task_quota[k] if en in rec["langs"] else "mvqa"
        if task == "ep_vqa":
            sample = build_ep_vqa(rec, lang, en)
        elif task == "bvqa":
            sample = build_bvqa(rec, lang, en, en) if rng.random() < 0.5 else build_bvqa(rec, en, lang, en)
        else:
            sample = build_mvqa(rec, lang)
        sample["id"] += f":{k}"
        out.append(sample)
    order_all = rng.permutation(len(out))
    out = [out[i] for i in order_all]
    summary = mix_summary(out, en)
    if verbose:
        print(format_mix_summary(summary), flush=True)
    return out, summary


def mix_summary(samples: Sequence[dict], pivot: str = "en") -> dict:
    """Counts by task, by language (BVQA as `q->a`), and the non-English/English ratio."""
    by_task = collections.Counter(s["type"] for s in samples)
    by_lang = collections.Counter(s["lang"] for s in samples)
    n_en = by_lang.get(pivot, 0)
    return {"total": len(samples), "by_task": dict(by_task), "by_language": dict(sorted(by_lang.items())),
            "english": n_en, "non_english": len(samples) - n_en,
            "non_english_ratio": (len(samples) - n_en) / n_en if n_en else float("inf")}


def format_mix_summary(summary: dict) -> str:
    """Printable one-block summary of a task mix."""
    return (f"[task mix] total={summary['total']} english={summary['english']} non_english={summary['non_english']} "
            f"ratio={summary['non_english_ratio']:.3f}\n  by task: {summary['by_task']}\n"
            f"  by language: {summary['by_language']}")
