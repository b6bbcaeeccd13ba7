"""`python -m xllava_jax.main --config configs/X.py[:arg] --workdir DIR [--config.a.b=value ...]`: train.

Validates the config, then runs it (one stage, or a stage list) with xllava_jax.train.loop.run (the demo: xllava_jax.demo.run);
re-running the same command resumes from the workdir's latest complete checkpoint. Multi-host: give
--coordinator_address/--num_processes/--process_id on every process (launch/local.py does it on one machine),
or run under SLURM or on a TPU slice where they are found in the environment.
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
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "multi-host: HOST:PORT of process 0's coordinator")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "multi-host: this process's index")
flags.mark_flags_as_required(["config", "workdir"])

def cluster_detected(env: dict) -> bool:
    """A multi-process SLURM job or a multi-host TPU slice (where jax.distributed.initialize() finds the rest)."""
    if "SLURM_JOB_ID" in env:
        return int(env.get("SLURM_NTASKS", "1")) > 1
    return "," in env.get("TPU_WORKER_HOSTNAMES", "") or "MEGASCALE_COORDINATOR_ADDRESS" in env


def init_distributed(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """jax.distributed.initialize before anything touches the devices: from the flags when given, else from
    the SLURM / TPU environment when there is a cluster; a single process otherwise."""
    import os

    import jax
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise app.UsageError("--coordinator_address, --num_processes and --process_id go together")
    if all(given):
        jax.distributed.initialize(coordinator, num_processes, process_id)
    elif cluster_detected(dict(os.environ)):
        jax.distributed.initialize()


def main(argv: list[str]) -> int:
    """Train, print the final metrics as JSON."""
    del argv
    init_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    import jax
    logging.getLogger().setLevel(logging.INFO if jax.process_index() == 0 else logging.WARNING)
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    from xllava_jax import demo
    from xllava_jax.train.loop import NonFiniteError, run
    from xllava_jax.train.validate import ConfigError
    config = _CONFIG.value
    try:
        results = (demo.run if config.get("assets") == "demo" else run)(config, _WORKDIR.value)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 3
    summary = {name: {"step": r["step"], "checkpoint": r["checkpoint"], "metrics": r["metrics"]}
               for name, r in results.items()}
    if jax.process_index() == 0:
        print(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    app.run(main)
