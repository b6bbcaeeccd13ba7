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
HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull", "-?")


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
    from xllava_jax.train.defaults import recipe_of
    from xllava_jax.train.hooks import NonFiniteError
    from xllava_jax.train.loop import run
    from xllava_jax.train.validate import ConfigError
    config = _CONFIG.value
    try:
        results = (demo.run if recipe_of(config) == "demo" else run)(config, _WORKDIR.value)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 3
    summary = {name: {"step": r["step"], "checkpoint": r["checkpoint"], "metrics": r["metrics"],
                      **({"data": r["data"]} if "data" in r else {})} for name, r in results.items()}
    if jax.process_index() == 0:
        print(json.dumps(summary, indent=1, default=str))
    return 0


def load_config_file(spec: str):
    """The ConfigDict of `--config` FILE.py[:ARG] (its get_config(ARG)), loaded without the command-line flags."""
    from ml_collections.config_flags.config_flags import ConfigFileFlagParser
    return ConfigFileFlagParser("config", lock_config=False).parse(spec)  # the parser --config itself uses


def flag_error(error: Exception, argv: list[str]) -> Exception:
    """A flag-parsing failure as a user error: for a `--config.` override, which key is wrong and the nearest
    one (or, in a stage list, that the stage name comes first); otherwise absl's message."""
    from xllava_jax.cli import UserError
    from xllava_jax.train.validate import override_problem
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None and "--config" in argv[:-1]:
        spec = argv[argv.index("--config") + 1]
    overrides = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    if spec and overrides:
        try:
            config = load_config_file(spec)
        except Exception as e:  # noqa: BLE001 - the config file itself is broken: say so
            return UserError(f"--config {spec}: {e}")
        for key in overrides:
            problem = override_problem(config, key)
            if problem:
                return UserError(problem)
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    return UserError(f"{message} (see --help)")


def cli(argv: list[str] | None = None) -> int:
    """Entry point: --help prints the flags and exits 0; a bad flag, config or path prints one `error:` line and
    exits 2 (the traceback too with --verbose); training stopped by non-finite losses exits 3."""
    from xllava_jax.cli import UserError, guarded, pop_verbose
    argv = list(sys.argv if argv is None else argv)
    rest, verbose = pop_verbose(argv[1:])
    if any(a in HELP_FLAGS for a in rest):
        print(__doc__)
        print(f"flags:\n{flags.FLAGS.module_help(flags.FLAGS.find_module_defining_flag('workdir'))}")
        print("  --verbose: show the traceback of an error too\n    (default: 'false')")
        return 0

    def parse(args: list[str]) -> list[str]:
        try:
            left = flags.FLAGS(args)
        except Exception as e:  # noqa: BLE001 - every flag problem is the user's
            raise flag_error(e, args) from e
        try:
            _CONFIG.value.stages  # a config file that failed to load raises here
        except OSError as e:
            reason = str(e).strip().splitlines()[-1].strip()
            raise UserError(f"--config {flags.FLAGS['config'].config_filename}: cannot load it ({reason})") from e
        return left

    return guarded(lambda: app.run(main, argv=[argv[0], *rest], flags_parser=parse), verbose)


if __name__ == "__main__":
    sys.exit(cli())
