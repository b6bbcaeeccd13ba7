"""`python -m xllava_jax.main --config configs/X.py[:arg] --workdir DIR [--config.a.b=value ...]`: train.

Validates the config, then runs it (one stage, or a stage list) with xllava_jax.train.loop.run;
re-running the same command resumes from the workdir's latest complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file (configs/*.py[:arg])",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory: checkpoints/, metrics.jsonl, tensorboard/")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> int:
    """Train, print the final metrics as JSON."""
    del argv
    logging.getLogger().setLevel(logging.INFO)
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    from xllava_jax.train.loop import NonFiniteError, run
    from xllava_jax.train.validate import ConfigError
    try:
        results = run(_CONFIG.value, _WORKDIR.value)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 3
    summary = {name: {"step": r["step"], "checkpoint": r["checkpoint"], "metrics": r["metrics"]}
               for name, r in results.items()}
    print(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    app.run(main)
