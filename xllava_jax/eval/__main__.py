"""CLI: ``python -m xllava_jax.eval <command>``: ``run`` scores a model on a benchmark, ``judge`` runs
preference evaluation."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from xllava_jax.cli import run_subcommand
from xllava_jax.eval.judge import JudgeConfig, run_judge
from xllava_jax.openai_api import ApiConfig, ChatClient

JUDGE_ENV = ("The judge API comes from JUDGE_BASE_URL / JUDGE_MODEL / JUDGE_API_KEY (and the other JUDGE_* "
             "settings), each falling back to the OPENAI_* variable; flags override. The key is never printed.")


def judge_client(args: argparse.Namespace) -> ChatClient:
    """Client from OPENAI_*, then JUDGE_*, then flags."""
    overrides = {k: getattr(args, k) for k in ("base_url", "model", "concurrency", "budget_usd", "timeout_s")}
    cfg = ApiConfig.from_env("JUDGE", fallback_prefix="OPENAI", temperature=0.0, max_tokens=512, **overrides)
    return ChatClient(cfg)


def cmd_judge(args: argparse.Namespace) -> int:
    """Run a preference comparison."""
    cfg = JudgeConfig(args.questions, args.answers_a, args.answers_b, args.image_root, args.out, args.name_a,
                      args.name_b, args.word_limit, args.cache, progress=not args.no_progress)
    print(json.dumps(run_judge(cfg, judge_client(args)), ensure_ascii=False))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Answer and score one benchmark."""
    from xllava_jax.eval.benchmarks import read_records
    from xllava_jax.eval.runner import evaluate
    from xllava_jax.infer.__main__ import build_engine, generation_config

    engine = build_engine(args)
    scores = evaluate(engine.model, engine.params, engine.tokenizer, args.benchmark, read_records(args.data),
                      image_root=args.image_root, template=args.template, config=generation_config(args),
                      out_dir=args.out, instruction=args.instruction, default_lang=args.lang, mesh=engine.mesh,
                      model_id=args.model_id or args.checkpoint, progress=not args.no_progress)
    print(json.dumps(scores, ensure_ascii=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The eval argument parser (subcommands)."""
    p = argparse.ArgumentParser(prog="python -m xllava_jax.eval", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    from xllava_jax.eval.benchmarks import BENCHMARKS
    from xllava_jax.infer.__main__ import add_model_args

    r = sub.add_parser("run", help="answer and score a benchmark (vqav2, gqa, pope, mmbench, bvqa; multilingual "
                                   "when records carry lang)",
                       description="Writes OUT/answers.jsonl (resumable) and OUT/scores.json.")
    add_model_args(r, max_new_tokens=128)
    r.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS))
    r.add_argument("--data", required=True, help="benchmark file (.jsonl, .json or MMBench .tsv)")
    r.add_argument("--image_root", help="directory the record images are relative to")
    r.add_argument("--out", required=True, help="output directory")
    r.add_argument("--instruction", help="replace the instruction line after each question ('' = none)")
    r.add_argument("--lang", default="en", help="language of records without a lang field")
    r.add_argument("--model_id", help="model_id written in each answer (default: the checkpoint path)")
    r.add_argument("--no_progress", action="store_true", help="no progress bar")
    r.set_defaults(fn=cmd_run)
    j = sub.add_parser("judge", help="preference evaluation of two models' answers by a vision judge",
                       description="Judge answers A and B for each image+question in both orders (X-LLaVA "
                                   "section 6); writes judgements, summary.json, table.md, chart.png.",
                       epilog=JUDGE_ENV)
    j.add_argument("--questions", required=True, help="LLaVA question JSONL (question_id, image, text)")
    j.add_argument("--answers_a", required=True, help="answers JSONL of model A (question_id, text)")
    j.add_argument("--answers_b", required=True, help="answers JSONL of model B (question_id, text)")
    j.add_argument("--image_root", required=True, help="directory the question images are relative to")
    j.add_argument("--out", required=True, help="output directory")
    j.add_argument("--name_a", default="A", help="display name of model A")
    j.add_argument("--name_b", default="B", help="display name of model B")
    j.add_argument("--word_limit", type=int, help="cut both answers to this many words first (paper: 30)")
    j.add_argument("--cache", help="judgement cache JSONL (default OUT/judge_cache.jsonl; share it across runs)")
    j.add_argument("--base_url", help="judge API base URL")
    j.add_argument("--model", help="judge model (vision-capable)")
    j.add_argument("--concurrency", type=int, help="requests in flight")
    j.add_argument("--budget_usd", type=float, help="stop once this much is spent")
    j.add_argument("--timeout_s", type=float, help="per-request timeout")
    j.add_argument("--no_progress", action="store_true", help="no progress bar")
    j.set_defaults(fn=cmd_judge)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    return run_subcommand(build_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
