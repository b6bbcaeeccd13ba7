"""python -m xllava_jax.experiments run --suite NAME[,NAME...|all] [--seeds N] [--quick] --out DIR [--config FILE]
                                    run --study v2 [--seeds N] [--quick] --out DIR   (docs/experiments/v2)
                                    report [--study v2] --out DIR   (rewrite report.md and plots from results.json)"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import time
from pathlib import Path

import ml_collections

from xllava_jax.experiments.config import SUITES, apply_quick

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "experiments"


def load_suite_config(suite: str, path: str | None = None) -> ml_collections.ConfigDict:
    """get_config() of configs/experiments/<suite>.py (or `path`)."""
    file = Path(path) if path else CONFIG_DIR / f"{suite}.py"
    spec = importlib.util.spec_from_file_location(f"experiment_config_{suite}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def compilation_cache(directory: Path) -> None:
    """JAX's persistent compilation cache in `directory`: arms whose stages compile the same program (same
    shapes, same vocabulary) reuse it instead of compiling again (most of a --quick run's time)."""
    import jax
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def override(c: ml_collections.ConfigDict, assignments: list[str]) -> ml_collections.ConfigDict:
    """Apply 'dotted.key=value' assignments, each value parsed as the type of the knob it replaces."""
    for a in assignments:
        key, sep, value = a.partition("=")
        flat = c.to_dict()
        for part in key.split("."):
            if not sep or not isinstance(flat, dict) or part not in flat:
                raise ValueError(f"--set {a!r}: no knob {key!r} (knobs: xllava_jax/experiments/config.py)")
            flat = flat[part]
        kind = type(flat)
        parsed = (value.lower() in ("1", "true", "yes")) if kind is bool else \
            tuple(float(x) for x in value.split(",")) if kind is tuple else kind(value)
        c.update_from_flattened_dict({key: parsed})
    return c


def run_config(suite: str, path: str | None, quick, seeds: int | None, arms: str,
               assignments: list[str]) -> ml_collections.ConfigDict:
    """A suite's config for one run: its file, made quick by `quick` (a function) when given, else `seeds` seeds
    when given; `arms` (;-separated) when given; then the --set assignments."""
    c = load_suite_config(suite, path)
    if quick is not None:
        c = quick(c)
    elif seeds is not None:
        c.seeds = seeds
    if arms:
        c.arms = arms
    return override(c, list(assignments))


def run_v2(out: Path, seeds: int | None, quick: bool, config: str | None = None, arms: str = "",
           cache: Path | None = None, assignments: list[str] = ()) -> float:
    """Run study v2 into `out` (DIR/results.json key 'v2'), then write its report; returns seconds."""
    from xllava_jax.experiments import report
    from xllava_jax.experiments.v2 import report as report_v2
    from xllava_jax.experiments.v2.config import apply_quick as quick_v2
    from xllava_jax.experiments.v2.study import run_study
    out.mkdir(parents=True, exist_ok=True)
    compilation_cache(cache or out / "jax_cache")
    c = run_config("v2", config, quick_v2 if quick else None, seeds, arms, assignments)
    start = time.perf_counter()
    result = run_study(c, out)
    report.save(out, c.suite, result)
    report.annotate(out, c.suite, vit_probe=result["vit_probe"], untestable=result["untestable"],
                    gate_effect=c.gate_effect, config=c.to_dict(), quick=quick)
    seconds = time.perf_counter() - start
    print(f"[experiments] study v2: {seconds:.0f} s", flush=True)
    print(f"[experiments] report: {report_v2.write_report(out)}", flush=True)
    return seconds


def run(suites: list[str], out: Path, seeds: int | None, quick: bool, config: str | None = None,
        arms: str = "", cache: Path | None = None, assignments: list[str] = ()) -> dict:
    """Run suites into `out` (results merged into DIR/results.json), then write the report; returns seconds."""
    from xllava_jax.experiments import report
    from xllava_jax.experiments.runner import run_suite
    out.mkdir(parents=True, exist_ok=True)
    compilation_cache(cache or out / "jax_cache")
    seconds = {}
    for suite in suites:
        c = run_config(suite, config, apply_quick if quick else None, seeds, arms, assignments)
        start = time.perf_counter()
        result = run_suite(c, out)
        report.save(out, suite, result)
        if quick:
            report.mark_quick(out, suite)
        seconds[suite] = time.perf_counter() - start
        print(f"[experiments] {suite}: {seconds[suite]:.0f} s", flush=True)
    path = report.write_report(out)
    print(f"[experiments] report: {path}", flush=True)
    return seconds


def main(argv: list[str] | None = None) -> int:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m xllava_jax.experiments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train and evaluate suites, then write the report")
    r.add_argument("--suite", default=None, help=f"study v1: comma list of {', '.join(SUITES)}, or all")
    r.add_argument("--study", default="v1", choices=("v1", "v2"),
                   help="v1: the suites of docs/experiments; v2: the pre-registered second study (docs/experiments/v2)")
    r.add_argument("--seeds", type=int, default=None, help="seeds per arm (default: the config's, 3)")
    r.add_argument("--quick", action="store_true", help="one seed, a handful of steps: plumbing only, no claims")
    r.add_argument("--out", required=True, type=Path)
    r.add_argument("--config", default=None, help="a suite config file instead of configs/experiments/<suite>.py")
    r.add_argument("--arms", default="", help="arm names separated by ; (names hold commas) restricting the suite")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a knob of the suite config, e.g. --set steps.stage2=600 (repeatable)")
    r.add_argument("--jax-cache", default=None, type=Path, help="persistent compilation cache (default DIR/jax_cache)")
    w = sub.add_parser("report", help="rewrite report.md and the plots from DIR/results.json")
    w.add_argument("--out", required=True, type=Path)
    w.add_argument("--study", default="v1", choices=("v1", "v2"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("xllava_jax.experiments").setLevel(logging.INFO)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if args.command == "report":
        if args.study == "v2":
            from xllava_jax.experiments.v2.report import write_report
        else:
            from xllava_jax.experiments.report import write_report
        print(write_report(args.out))
        return 0
    if args.study == "v2":
        if args.suite:
            parser.error("--suite belongs to study v1; study v2 runs all its arms (restrict with --arms)")
        run_v2(args.out, args.seeds, args.quick, args.config, args.arms, args.jax_cache, args.set)
        return 0
    if not args.suite:
        parser.error("study v1 needs --suite")
    suites = list(SUITES) if args.suite == "all" else [s.strip() for s in args.suite.split(",")]
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {unknown}; choose from {', '.join(SUITES)} or all")
    run(suites, args.out, args.seeds, args.quick, args.config, args.arms, args.jax_cache, args.set)
    return 0


if __name__ == "__main__":
    sys.exit(main())
