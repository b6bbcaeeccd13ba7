"""LRM-LLaVA Figure 6 in miniature: non-English volume at 40%, 70%, 100%, 150% of English (full task mix).

  python -m xllava_jax.experiments run --suite lrm_fig6 --seeds 3 --out DIR
Every knob and its default: xllava_jax/experiments/config.py; the design: docs/experiments/DESIGN.md.
"""

from xllava_jax.experiments.config import suite_config


def get_config():
    """The suite config."""
    c = suite_config("lrm_fig6")
    c.ratios = (0.4, 0.7, 1.0, 1.5)  # task_mix.non_english_ratio of the arms (1.0 is lrm_table3's full arm)
    return c
