"""The suites' arms: what each arm changes (tokenizer, stage 0, stage-1/2 data, task mix, consistency loss),
in the papers' row order. Arms that coincide in a stage share its checkpoint (runner.py keys stages by config)."""

from __future__ import annotations

import dataclasses

import ml_collections

BASE_QA = ("qa_en", "qa_ko", "qa_zh")  # English-rich instruction data, scarce ko/zh (visual kinds only)
MVIF = ("mvif",)  # X-LLaVA's mvif-like multilingual records (en/ko/zh)
ALL_TASKS = "mvqa,ep_vqa,bvqa"


@dataclasses.dataclass(frozen=True)
class Arm:
    """One row of a table: the recipe of its model."""

    name: str
    expanded: bool = True  # the Korean/Chinese-expanded tokenizer (False: the English base tokenizer, -V)
    stage0: bool = True  # bilingual text pretraining (False: -P; the stage-1 LLM is the English base model)
    stage1_mvqa: bool = False  # LRM MVQA task instructions in stage 1 (task_mix over captions_parallel)
    stage2_files: tuple[str, ...] = BASE_QA  # instruction files of stage 2
    stage2_tasks: str = ""  # LRM task mix of stage 2 over `parallel` ('' = none)
    non_english_ratio: float = 1.0  # task_mix.non_english_ratio
    consistency_weight: float = 0.0  # train.consistency_weight in stage 2


def xllava_table2(c: ml_collections.ConfigDict) -> list[Arm]:
    """X-LLaVA Table 2: (-V,-P), (-P), full; each without and with the mvif-like records (+O)."""
    rows = [("X-LLaVA(-V,-P)", False, False), ("X-LLaVA(-P)", True, False), ("X-LLaVA", True, True)]
    return [Arm(name + plus, expanded=e, stage0=p, stage2_files=BASE_QA + (MVIF if plus else ()))
            for name, e, p in rows for plus in ("", " + O")]


def lrm_table3(c: ml_collections.ConfigDict) -> list[Arm]:
    """LRM-LLaVA Table 3: without all task instructions, without each one, the full mix."""
    r = c.non_english_ratio
    return [Arm("w/o All Task Instructions"),
            Arm("w/o MVQA Instruction (Pre-training)", stage2_tasks=ALL_TASKS, non_english_ratio=r),
            Arm("w/o MVQA Instruction (Fine-tuning)", stage1_mvqa=True, stage2_tasks="ep_vqa,bvqa", non_english_ratio=r),
            Arm("w/o EP-VQA Instruction", stage1_mvqa=True, stage2_tasks="mvqa,bvqa", non_english_ratio=r),
            Arm("w/o BVQA Instruction", stage1_mvqa=True, stage2_tasks="mvqa,ep_vqa", non_english_ratio=r),
            Arm("LRM-LLaVA", stage1_mvqa=True, stage2_tasks=ALL_TASKS, non_english_ratio=r)]


def lrm_fig6(c: ml_collections.ConfigDict) -> list[Arm]:
    """LRM-LLaVA Figure 6: the full mix with non-English volume at each ratio of English."""
    return [Arm(f"{round(100 * r)}%", stage1_mvqa=True, stage2_tasks=ALL_TASKS, non_english_ratio=float(r))
            for r in c.ratios]


def lrm_fig5(c: ml_collections.ConfigDict) -> list[Arm]:
    """LRM-LLaVA Figure 5: LLaVA (no task instructions) vs LRM-LLaVA, each without and with the consistency loss."""
    w, r = c.consistency_weight, c.non_english_ratio
    return [Arm("LLaVA"), Arm("LLaVA + cons", consistency_weight=w),
            Arm("LRM-LLaVA", stage1_mvqa=True, stage2_tasks=ALL_TASKS, non_english_ratio=r),
            Arm("LRM-LLaVA + cons", stage1_mvqa=True, stage2_tasks=ALL_TASKS, non_english_ratio=r, consistency_weight=w)]


ARMS = {"xllava_table2": xllava_table2, "lrm_table3": lrm_table3, "lrm_fig6": lrm_fig6, "lrm_fig5": lrm_fig5}


def suite_arms(c: ml_collections.ConfigDict) -> list[Arm]:
    """The arms of `c.suite` (restricted to `c.arms`, a ;-separated list, when set: names hold commas)."""
    return select_arms(ARMS[c.suite](c), c.arms, c.suite)


def select_arms(arms: list[Arm], names: str, label: str) -> list[Arm]:
    """The arms named in `names` (a ;-separated list: names hold commas), in their order; all when empty.
    ValueError naming the unknown ones."""
    if not names:
        return arms
    keep = [a.strip() for a in names.split(";")]
    unknown = set(keep) - {a.name for a in arms}
    if unknown:
        raise ValueError(f"{label}: unknown arms {sorted(unknown)}; arms: {[a.name for a in arms]}")
    return [a for a in arms if a.name in keep]
