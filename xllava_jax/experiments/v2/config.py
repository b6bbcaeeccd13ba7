"""Study v2's config (configs/experiments/v2.py starts from `study_config`): every knob, its default, its meaning."""

from __future__ import annotations

import ml_collections

from xllava_jax.experiments.v2.vision import default_vision
from xllava_jax.experiments.v2.world import default_world


def study_config() -> ml_collections.ConfigDict:
    """The pre-registered defaults of study v2 (docs/experiments/v2/DESIGN.md)."""
    c = ml_collections.ConfigDict()
    c.study = "v2"
    c.suite = "v2"  # results.json key
    c.seeds = 8  # seeds of the primary arms (the primary family's n)
    c.exploratory_seeds = 3  # seeds of the exploratory arms (capped at `seeds`)
    c.arms = ""  # ;-separated arm names restricting the study (names hold commas); "" = all
    c.world = default_world()  # data sizes of the v2 world (xllava_jax/experiments/v2/world.py)
    c.vision = default_vision()  # the frozen ViT and its one-off pretraining (xllava_jax/experiments/v2/vision.py)
    # the LLM (train.defaults.tiny_model); the vision tower comes from the pretrained ViT (init.clip_dir)
    c.model = ml_collections.ConfigDict(dict(hidden=64, layers=2, vision_hidden=64, image_size=48, patch=12))
    # optimizer steps: stage 0 long enough to teach, stage 2 short and gentle
    c.steps = ml_collections.ConfigDict(dict(base=400, stage0=800, stage1=200, stage2=300))
    c.batch = ml_collections.ConfigDict(dict(text=16, stage1=32, stage2=16))  # global batch rows per step
    c.lr = ml_collections.ConfigDict(dict(text=3e-3, stage1=1e-3, stage2=5e-4))  # peak learning rates
    # tokens per row of the text stages and stage 1; stage 2's rows are sized per arm (the longest record of its
    # stream and of the held-out conversations under its tokenizer, rounded up to row_multiple)
    c.max_len = ml_collections.ConfigDict(dict(text=128, stage1=96, stage2=0))
    c.row_multiple = 16
    c.consistency_weight = 0.5  # lambda of train.consistency_weight in the '+ cons' arms (our own extension)
    c.non_english_ratio = 1.0  # LRM task mix: non-English volume / English volume of LRM-LLaVA
    c.ratios = (0.4, 0.7, 1.5)  # the volume arms' ratios besides LRM-LLaVA's 1.0
    c.gate_effect = 0.15  # the gate's pre-declared minimum mean effect on acc_ko (15 points)
    c.margin = 0.05  # non-inferiority margin (5 points)
    c.untestable = ""  # comma list of hypothesis ids the pilot declared untestable before the full run (e.g. P2)
    c.eval = ml_collections.ConfigDict(dict(
        max_new_tokens=0,  # greedy answer length; 0 = per arm: the longest gold answer under its tokenizer + 2
        gap_batches=4,  # held-out batches for the modality gap (stage-2 eval_data)
    ))
    # --quick: the plumbing only (one seed, a handful of steps, a small world, three arms); no claims
    c.quick = ml_collections.ConfigDict(dict(
        seeds=1, arms="X-LLaVA(-V,-P);X-LLaVA + O;LRM-LLaVA + cons",
        steps=ml_collections.ConfigDict(dict(base=4, stage0=4, stage1=4, stage2=6)),
        world=ml_collections.ConfigDict(dict(en_qa=24, scarce_qa=8, mvif=12, parallel=12, en_captions=24,
                                             scarce_captions=8, text_en=60, text_non_en=40, eval_per_triple=1,
                                             base_vocab=300, new_pieces=120)),
        vision=ml_collections.ConfigDict(dict(images=64, steps=3, batch=16, probe_images=16)),
        gap_batches=1))
    return c


def apply_quick(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The --quick version of the study config."""
    c = ml_collections.ConfigDict(c.to_dict())
    q = c.quick
    c.seeds, c.arms = q.seeds, q.arms
    c.steps.update(q.steps.to_dict())
    c.world.update(q.world.to_dict())
    c.vision.update(q.vision.to_dict())
    c.eval.update(gap_batches=q.gap_batches)
    return c
