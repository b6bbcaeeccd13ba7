"""Study v2: the papers' mechanisms with room to act, a gate arm, 8 seeds for the primary family (Holm).

  python -m xllava_jax.experiments run --study v2 --out DIR
Every knob and its default: xllava_jax/experiments/v2/config.py; the pre-registration: docs/experiments/v2/DESIGN.md.
"""

from xllava_jax.experiments.v2.config import study_config


def get_config():
    """The study config."""
    return study_config()
