"""The shared suite config (configs/experiments/*.py start from `suite_config`): every knob, its default, its meaning."""

from __future__ import annotations

import ml_collections

from xllava_jax.experiments.world import default_world

SUITES = ("xllava_table2", "lrm_table3", "lrm_fig6", "lrm_fig5")


def suite_config(suite: str) -> ml_collections.ConfigDict:
    """Defaults of every suite; the suite's config file changes what differs."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose from {', '.join(SUITES)}")
    c = ml_collections.ConfigDict()
    c.suite = suite
    c.seeds = 3  # training seeds per arm (>= 3 for an interval; the world itself is fixed)
    c.arms = ""  # ;-separated arm names restricting the suite (names hold commas); "" = all
    c.world = default_world()  # data sizes of the synthetic world (xllava_jax/experiments/world.py)
    # the tiny LLaVA (train.defaults.tiny_model)
    c.model = ml_collections.ConfigDict(dict(hidden=64, layers=2, vision_hidden=32, image_size=32, patch=8))
    # optimizer steps per stage; every arm of a suite trains the same steps (equal steps, equal row tokens)
    c.steps = ml_collections.ConfigDict(dict(base=300, stage0=300, stage1=300, stage2=600))
    c.batch = ml_collections.ConfigDict(dict(text=16, stage1=32, stage2=16))  # global batch rows per step
    c.lr = ml_collections.ConfigDict(dict(text=3e-3, stage1=2e-3, stage2=2e-3))  # peak learning rates
    # tokens per row; stage1/stage2 must hold a Korean record under the byte-fallback (-V) tokenizer untruncated
    c.max_len = ml_collections.ConfigDict(dict(text=128, stage1=96, stage2=256))
    c.consistency_weight = 0.5  # lambda of train.consistency_weight in the arms that switch it on (lrm_fig5)
    c.non_english_ratio = 1.0  # LRM task mix: non-English volume / English volume (lrm_fig6 varies it)
    c.eval = ml_collections.ConfigDict(dict(
        max_new_tokens=12,  # greedy answer length on the held-out questions
        gap_batches=4,  # held-out batches for the modality gap (stage-2 eval_data)
        feature_points=240,  # held-out samples per language in the Figure-5 feature picture
    ))
    # --quick: the plumbing only (one seed, a handful of steps, a small world); no claims
    c.quick = ml_collections.ConfigDict(dict(
        seeds=1, steps=ml_collections.ConfigDict(dict(base=4, stage0=4, stage1=4, stage2=6)),
        world=ml_collections.ConfigDict(dict(en_qa=24, scarce_qa=8, mvif=12, parallel=12, en_captions=24,
                                             scarce_captions=8, text_en=60, text_non_en=40, eval_scenes=2,
                                             base_vocab=300, new_pieces=120)),
        max_new_tokens=4, gap_batches=1, feature_points=12))
    return c


def apply_quick(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The --quick version of a suite config."""
    c = ml_collections.ConfigDict(c.to_dict())
    q = c.quick
    c.seeds = q.seeds
    c.steps.update(q.steps.to_dict())
    c.world.update(q.world.to_dict())
    c.eval.update(max_new_tokens=q.max_new_tokens, gap_batches=q.gap_batches, feature_points=q.feature_points)
    return c
