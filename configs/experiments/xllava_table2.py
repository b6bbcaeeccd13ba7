"""X-LLaVA Table 2 in miniature: X-LLaVA / (-P) / (-V,-P), each without and with the mvif-like records.

  python -m xllava_jax.experiments run --suite xllava_table2 --seeds 3 --out DIR
Every knob and its default: xllava_jax/experiments/config.py; the design: docs/experiments/DESIGN.md.
"""

from xllava_jax.experiments.config import suite_config


def get_config():
    """The suite config."""
    c = suite_config("xllava_table2")
    return c
