"""LRM-LLaVA Figure 5 in miniature: modality gap and a 2-D picture of image vs multilingual text features,
with and without the task instructions, with and without the consistency loss (stage 2).

  python -m xllava_jax.experiments run --suite lrm_fig5 --seeds 3 --out DIR
Every knob and its default: xllava_jax/experiments/config.py; the design: docs/experiments/DESIGN.md.
"""

from xllava_jax.experiments.config import suite_config


def get_config():
    """The suite config."""
    c = suite_config("lrm_fig5")
    c.consistency_weight = 0.5  # lambda in the '+cons' arms (train.consistency_weight, stage 2 only)
    return c
