"""Study v2: the arms (primary: 8 seeds; exploratory: 3), their stages (v1's stage configs with the frozen
pretrained ViT, projector-only stage 1 and a stage 2 that reads its common-random-numbers stream in rows sized
per arm), the evaluation (exact match by group and the forced-choice log-odds) and the pre-registered
hypotheses (docs/experiments/v2/DESIGN.md)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import ml_collections

from xllava_jax.experiments import runner
from xllava_jax.experiments import world as v1
from xllava_jax.experiments.suites import ALL_TASKS, BASE_QA, MVIF, Arm, select_arms
from xllava_jax.experiments.v2 import streams
from xllava_jax.experiments.v2 import world as w2
from xllava_jax.experiments.v2.scoring import forced_choice
from xllava_jax.experiments.v2.vision import pretrain_vit

log = logging.getLogger(__name__)
GATE = ("qa_gate_ko",)
WO_ALL = "X-LLaVA"  # LRM "w/o All Task Instructions" and Figure 5's "LLaVA" are this arm
PRIMARY = ("X-LLaVA(-V,-P)", "X-LLaVA", "X-LLaVA + O", "gate: X-LLaVA + 5xKO", "LRM-LLaVA")


def study_arms(c: ml_collections.ConfigDict) -> list[Arm]:
    """Every arm of study v2 (primary first), restricted to c.arms (;-separated) when set."""
    r, cw = c.non_english_ratio, c.consistency_weight
    lrm = dict(stage1_mvqa=True, stage2_tasks=ALL_TASKS, non_english_ratio=r)
    arms = [Arm("X-LLaVA(-V,-P)", expanded=False, stage0=False), Arm("X-LLaVA"),
            Arm("X-LLaVA + O", stage2_files=BASE_QA + MVIF), Arm("gate: X-LLaVA + 5xKO", stage2_files=BASE_QA + GATE),
            Arm("LRM-LLaVA", **lrm),
            Arm("X-LLaVA(-P)", stage0=False), Arm("X-LLaVA(-P) + O", stage0=False, stage2_files=BASE_QA + MVIF),
            Arm("X-LLaVA(-V,-P) + O", expanded=False, stage0=False, stage2_files=BASE_QA + MVIF),
            Arm("w/o MVQA Instruction (Pre-training)", stage2_tasks=ALL_TASKS, non_english_ratio=r),
            Arm("w/o MVQA Instruction (Fine-tuning)", stage1_mvqa=True, stage2_tasks="ep_vqa,bvqa", non_english_ratio=r),
            Arm("w/o EP-VQA Instruction", stage1_mvqa=True, stage2_tasks="mvqa,bvqa", non_english_ratio=r),
            Arm("w/o BVQA Instruction", stage1_mvqa=True, stage2_tasks="mvqa,ep_vqa", non_english_ratio=r),
            *(Arm(f"LRM {round(100 * x)}%", stage1_mvqa=True, stage2_tasks=ALL_TASKS, non_english_ratio=float(x))
              for x in c.ratios),
            Arm("LLaVA + cons", consistency_weight=cw), Arm("LRM-LLaVA + cons", consistency_weight=cw, **lrm)]
    return select_arms(arms, c.arms, "study v2")


def arm_seeds(arm: Arm, c: ml_collections.ConfigDict) -> int:
    """Seeds of an arm: c.seeds for the primary arms, min(c.exploratory_seeds, c.seeds) for the rest."""
    return c.seeds if arm.name in PRIMARY else min(c.exploratory_seeds, c.seeds)


def tokenizer_of(arm: Arm, p: dict) -> Path:
    """The arm's tokenizer: expanded, or the English base (-V)."""
    return p["tokenizer"] if arm.expanded else p["tokenizer_en"]


def stage2_stream(arm: Arm, c: ml_collections.ConfigDict, p: dict, out: Path, seed: int) -> tuple[Path, list[dict]]:
    """(path, records) of the arm's stage-2 stream for `seed`: the base files' master order with the arm's extra
    records (extra files, task mix) at fixed slots; the file name carries the recipe's digest."""
    root = p["root"]
    extra_files = [f for f in arm.stage2_files if f not in BASE_QA]
    base = streams.file_records(root, BASE_QA)
    extra = streams.file_records(root, extra_files)
    if arm.stage2_tasks:
        extra += streams.task_mix_records(root, arm.stage2_tasks, arm.non_english_ratio, seed)
    length = c.steps.stage2 * c.batch.stage2
    recipe = json.dumps([extra_files, arm.stage2_tasks, arm.non_english_ratio, length, seed, len(base), len(extra)])
    path = out / "streams" / f"seed{seed}" / f"{hashlib.sha1(recipe.encode()).hexdigest()[:12]}.jsonl"
    streams.write_stream(path, base, extra, length, seed)
    return path, base + extra


def stage_configs(arm: Arm, c: ml_collections.ConfigDict, p: dict, out: Path, seed: int
                  ) -> list[tuple[str, ml_collections.ConfigDict]]:
    """v1's stages of the arm, changed as v2 designs them: the frozen pretrained ViT, projector-only stage 1,
    stage 2 reading its stream in order with rows sized per arm."""
    from xllava_jax.tokenizer.spm import load_tokenizer
    stages = runner.stage_configs(arm, c, p, seed)
    root, tok = str(p["root"]), tokenizer_of(arm, p)
    for name, s in stages:
        if name == "stage1":
            s.train.trainable = "projector"
            s.init.clip_dir = str(p["vit"])
    s2 = stages[-1][1]
    path, records = stage2_stream(arm, c, p, out, seed)
    image_tokens = (c.model.image_size // c.model.patch) ** 2
    held = streams.file_records(Path(root), ("eval_conversations",))
    max_len = c.max_len.stage2 or streams.row_length(records + held, load_tokenizer(tok), "vicuna_v1", image_tokens,
                                                       c.row_multiple)
    s2.data.update(files=(str(path),), langs=(), shuffle=False, max_len=max_len, image_root=root)
    s2.data.task_mix.update(files=(), tasks="")
    s2.eval_data.update(max_len=max_len)
    s2.train.trainable = "projector,language_model"
    return stages


def generation_length(tok: Path, records: list[dict]) -> int:
    """The longest gold answer under `tok` + 2 (every answer fits, with its end of turn)."""
    from xllava_jax.tokenizer.spm import load_tokenizer
    t = load_tokenizer(tok)
    return max(len(t.encode(r["answer"])) for r in records) + 2


def arm_metrics(arm: Arm, c: ml_collections.ConfigDict, p: dict, out: Path, seed: int) -> dict:
    """Train (or reuse) the arm's stages for one seed; exact match by group, forced choice, v1's chain metrics."""
    from xllava_jax.jsonl import read_jsonl
    chain = runner.run_chain(stage_configs(arm, c, p, out, seed), out, seed)
    last, tok = chain[-1], tokenizer_of(arm, p)
    eval_dir = Path(last["workdir"]) / "eval"
    questions = list(read_jsonl(p["questions"]))
    new_tokens = c.eval.max_new_tokens or generation_length(tok, questions)
    metrics = runner.evaluate_arm(last["checkpoint"], tok, p, c, eval_dir, groups=w2.metric_groups,
                                  max_new_tokens=new_tokens)
    metrics.update(forced_choice(last["checkpoint"], tok, questions, str(p["root"]), eval_dir / "forced_choice.json"))
    metrics.update(runner.chain_metrics(chain, tok, p))
    book = runner.bookkeeping(chain)
    book.update(max_new_tokens=new_tokens, stage2_max_len=int(chain[-1]["row_tokens"] // max(chain[-1]["step"], 1)
                                                              // c.batch.stage2))
    return {"metrics": metrics, **book}


def run_study(c: ml_collections.ConfigDict, out: str | Path) -> dict:
    """Every arm for its seeds, seed-major (seed 0 of every arm first): run_suite's result shape, plus the ViT's
    probe accuracy and the pre-run declarations."""
    out = Path(out)
    p = w2.prepare(out / "world", c.world)
    probe = pretrain_vit(p["vit"], c.world, c.vision)
    arms = study_arms(c)
    result = {"arms": {}, "baselines": v1.text_only_baseline(p), "seconds": {}, "vit_probe": probe,
              "untestable": [x for x in c.untestable.split(",") if x], "seeds": c.seeds}
    for seed in range(c.seeds):
        for arm in (a for a in arms if seed < arm_seeds(a, c)):
            start = time.perf_counter()
            r = arm_metrics(arm, c, p, out, seed)
            entry = result["arms"].setdefault(arm.name, {"seeds": [], "per_seed": [], "arm": runner.dataclasses_dict(arm)})
            entry["seeds"].append(seed)
            entry["per_seed"].append(r)
            result["seconds"][f"{arm.name} / seed {seed}"] = time.perf_counter() - start
            log.info("v2 / %s / seed %d: %s", arm.name, seed,
                     {k: round(v, 3) for k, v in r["metrics"].items() if k in ("acc_en", "acc_ko", "acc_ko_fruit_text",
                                                                                  "acc_non_en", "lo_ko")})
    return result
