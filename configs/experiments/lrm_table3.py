"""LRM-LLaVA Table 3 in miniature: the full task mix vs without all task instructions vs without each one.

  python -m xllava_jax.experiments run --suite lrm_table3 --seeds 3 --out DIR
Every knob and its default: xllava_jax/experiments/config.py; the design: docs/experiments/DESIGN.md.
"""

from xllava_jax.experiments.config import suite_config


def get_config():
    """The suite config."""
    c = suite_config("lrm_table3")
    return c
