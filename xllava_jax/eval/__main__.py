"""CLI: ``python -m xllava_jax.eval <command>``; ``judge`` runs preference evaluation (``run`` comes later)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

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


def build_parser() -> argparse.ArgumentParser:
    """The eval argument parser (subcommands)."""
    p = argparse.ArgumentParser(prog="python -m xllava_jax.eval", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
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
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
