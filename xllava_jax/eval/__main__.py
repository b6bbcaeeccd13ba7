"""CLI: ``python -m xllava_jax.eval <command>``: ``run`` scores a model on a benchmark, ``judge`` runs
preference evaluation."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from xllava_jax.cli import add_subparsers, new_parser, run_subcommand
from xllava_jax.eval.benchmarks import INSTRUCTION_LANGS
from xllava_jax.eval.judge import JudgeConfig, run_judge
from xllava_jax.openai_api import ApiConfig, ChatClient

REPLIES_FILE = "replies.jsonl"  # every paid judge reply and possibly billed timeout (budget across reruns)
JUDGE_ENV = ("The judge API comes from JUDGE_BASE_URL / JUDGE_MODEL / JUDGE_API_KEY (and the other JUDGE_* "
             "settings), each falling back to the OPENAI_* variable; flags override. The key is never printed.")


JUDGE_FLAGS = ("base_url", "model", "concurrency", "budget_usd", "timeout_s")


def judge_client(args: argparse.Namespace, prefix: str = "", temperature: float = 0.0,
                 max_tokens: int = 512) -> ChatClient:
    """Client from OPENAI_*, then JUDGE_*, then the flags `--<prefix><setting>`; replies stored in OUT."""
    overrides = {k: getattr(args, prefix + k, None) for k in JUDGE_FLAGS}
    cfg = ApiConfig.from_env("JUDGE", fallback_prefix="OPENAI", temperature=temperature, max_tokens=max_tokens,
                             **overrides)
    return ChatClient(cfg, store=os.path.join(args.out, REPLIES_FILE))


def add_review_args(p: argparse.ArgumentParser) -> None:
    """The judge flags of the judged benchmarks (llava_bench, ko_open) and of MMBench's answer matching."""
    g = p.add_argument_group("judge (llava_bench, ko_open; mmbench with --mmbench_judge)", JUDGE_ENV)
    add_client_args(g, "judge_", "judge model (LLaVA used gpt-4-0314; ko_open's judge sees the image; "
                                 "--mmbench_judge without JUDGE_MODEL: MMBench's gpt-3.5-turbo-0613)")
    g.add_argument("--mmbench_judge", action="store_true",
                   help="mmbench: send the answers MMBench's rules cannot read to the judge with MMBench's matching "
                        "prompt, as MMBench asks ChatGPT (without it they are reported as unresolved)")


def env_default(setting: str) -> str:
    """The `(default: ...)` text of a judge API flag: JUDGE_*, then OPENAI_*, then ApiConfig's value."""
    value = getattr(ApiConfig(), setting)
    env = setting.upper()
    return (f"(default: $JUDGE_{env}, else $OPENAI_{env}, else "
            + ("none" if value is None else str(value)) + ")")


def add_client_args(g: argparse._ActionsContainer, prefix: str, model_help: str) -> None:
    """The judge API flags (base URL, model, concurrency, budget, timeout), named with `prefix`."""
    g.add_argument(f"--{prefix}base_url", help=f"judge API base URL {env_default('base_url')}")
    g.add_argument(f"--{prefix}model", help=f"{model_help} {env_default('model')}")
    g.add_argument(f"--{prefix}concurrency", type=int, help=f"requests in flight {env_default('concurrency')}")
    g.add_argument(f"--{prefix}budget_usd", type=float, help="stop once this much is spent, counting earlier runs "
                   f"into the same --out (OUT/replies.jsonl) {env_default('budget_usd')}")
    g.add_argument(f"--{prefix}timeout_s", type=float, help=f"per-request timeout {env_default('timeout_s')}")


def add_lang_args(p: argparse.ArgumentParser) -> None:
    """--lang and --instruction_lang."""
    p.add_argument("--lang", help="language of records without a lang field (default: the benchmark's, en; "
                                  "koviz, koliv, ko_open: ko)")
    p.add_argument("--instruction_lang", choices=INSTRUCTION_LANGS, default="native",
                   help="language of the instruction line of a non-English question: native (its own) or en "
                        "(LLaVA-1.5's English line, as X-LLaVA's Table 3); recorded in scores.json")


def make_reviewer(args: argparse.Namespace, benchmark: str):
    """The judge of a judged benchmark (LLaVA's review settings, replies stored in OUT), MMBench's answer matcher
    with --mmbench_judge, else None."""
    from xllava_jax.eval.registry import get_benchmark
    from xllava_jax.eval import review
    from xllava_jax.eval.review import REVIEW_MAX_TOKENS, REVIEW_TEMPERATURE, Reviewer
    bench = get_benchmark(benchmark)
    if bench.judge_optional and args.mmbench_judge:
        if not (args.judge_model or os.environ.get("JUDGE_MODEL")):
            args.judge_model = review.MMBENCH_MATCH_MODEL
        return review.OptionMatcher(judge_client(args, "judge_", review.MMBENCH_MATCH_TEMPERATURE,
                                                 review.MMBENCH_MATCH_MAX_TOKENS))
    if not bench.judged:
        return None
    client = judge_client(args, "judge_", temperature=REVIEW_TEMPERATURE, max_tokens=REVIEW_MAX_TOKENS)
    return Reviewer(client, image_root=args.image_root, out_dir=args.out)


def print_scores(scores: dict) -> None:
    """The per-language table (stderr) and the scores (stdout, JSON)."""
    if "per_language" in scores:
        from xllava_jax.eval.metrics import language_table
        print(language_table(scores, scores["metric"]), file=sys.stderr)
    print(json.dumps(scores, ensure_ascii=False))


def cmd_judge(args: argparse.Namespace) -> int:
    """Run a preference comparison."""
    cfg = JudgeConfig(args.questions, args.answers_a, args.answers_b, args.image_root, args.out, args.name_a,
                      args.name_b, args.word_limit, args.cache, progress=not args.no_progress,
                      protocol=args.protocol)
    print(json.dumps(run_judge(cfg, judge_client(args)), ensure_ascii=False))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Answer and score one benchmark."""
    from xllava_jax.eval.registry import get_benchmark, load_benchmark_records
    from xllava_jax.eval.runner import EVAL_CONFIG, evaluate
    from xllava_jax.infer.__main__ import build_engine, generation_config
    from xllava_jax.infer.answers import checkpoint_identity
    from xllava_jax.infer.prompts import trained_prompting

    bench = get_benchmark(args.benchmark)
    records = load_benchmark_records(bench, args.data)
    reviewer = make_reviewer(args, args.benchmark)  # judge settings checked before the model loads
    args.max_new_tokens = args.max_new_tokens or bench.max_new_tokens or EVAL_CONFIG.max_new_tokens
    engine = build_engine(args)  # resolves --template (default: the checkpoint's training template)
    instruction = args.instruction  # the trained line replaces only a free-form short-answer line
    if instruction is None and bench.short_answer:
        instruction = trained_prompting(args.checkpoint).get("instruction")
    config = generation_config(args)
    scores = evaluate(engine.model, engine.params, engine.tokenizer, bench, records,
                      image_root=args.image_root, template=args.template, config=config,
                      out_dir=args.out, instruction=instruction, default_lang=args.lang, mesh=engine.mesh,
                      instruction_lang=args.instruction_lang,
                      model_id=args.model_id or args.checkpoint, progress=not args.no_progress,
                      checkpoint=checkpoint_identity(engine.params, args.checkpoint), reviewer=reviewer)
    print_scores(scores)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """Score an existing answers file (no model); judged benchmarks ask the judge."""
    from xllava_jax.jsonl import read_jsonl
    from xllava_jax.eval.benchmarks import build_questions
    from xllava_jax.eval.registry import get_benchmark, load_benchmark_records
    from xllava_jax.eval.runner import score_answers, write_scores

    bench = get_benchmark(args.benchmark)
    questions = build_questions(bench, load_benchmark_records(bench, args.data), args.instruction, args.lang,
                                args.instruction_lang)
    by_id = {str(r["question_id"]): r["text"] for r in read_jsonl(args.answers)}
    answers = {q.question_id: by_id[str(q.question_id)] for q in questions if str(q.question_id) in by_id}
    scores = score_answers(bench, questions, answers, make_reviewer(args, args.benchmark))
    scores["instruction_lang"] = args.instruction_lang
    write_scores(args.out, scores, bench)
    print_scores(scores)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    """Write a test-set upload file from the test questions and an answers file."""
    from xllava_jax.eval.submit import write_submission
    print(json.dumps({"out": args.out, **write_submission(args.benchmark, args.data, args.answers, args.out)}))
    return 0


def cmd_chart(args: argparse.Namespace) -> int:
    """Win/tie/loss chart of several judge runs."""
    from xllava_jax.eval.judge import write_comparison
    print(write_comparison(args.summaries, args.out), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The eval argument parser (subcommands)."""
    p = new_parser("python -m xllava_jax.eval", __doc__)
    sub = add_subparsers(p)
    from xllava_jax.eval.registry import BENCHMARKS
    from xllava_jax.eval.runner import EVAL_CONFIG
    from xllava_jax.infer.__main__ import add_model_args

    r = sub.add_parser("run", help="answer and score a benchmark (vqav2, gqa, pope, mmbench, bvqa, mme, seed, "
                                   "scienceqa, textvqa, vizwiz, xllava_bvqa; llava_bench and ko_open scored by a "
                                   "judge; multilingual when records carry lang)",
                       description="Writes OUT/answers.jsonl (resumable) and OUT/scores.json.")
    add_model_args(r, max_new_tokens=128)
    r.set_defaults(max_new_tokens=None)  # None: the benchmark's
    next(a for a in r._actions if a.dest == "max_new_tokens").help = (
        "most tokens generated per answer (default: the benchmark's, as LLaVA's scripts: "
        + ", ".join(f"{n} {b.max_new_tokens}" for n, b in sorted(BENCHMARKS.items()) if b.max_new_tokens)
        + f"; the others {EVAL_CONFIG.max_new_tokens})")
    r.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS), help="which benchmark's scoring")
    r.add_argument("--data", required=True, help="benchmark file (.jsonl, .json or MMBench .tsv) or the official "
                                                 "release file/directory (docs/evaluation.md)")
    r.add_argument("--image_root", help="directory the record images are relative to (default: the current "
                                        "directory)")
    r.add_argument("--out", required=True, help="output directory")
    r.add_argument("--instruction", help="replace the short-answer line after each question ('' = none; default: "
                                         "the one the checkpoint was trained with, else the benchmark's); the "
                                         "option-letter and 'Unanswerable' lines are never replaced")
    add_lang_args(r)
    r.add_argument("--model_id", help="model_id written in each answer (default: the checkpoint path)")
    r.add_argument("--no_progress", action="store_true", help="no progress bar")
    add_review_args(r)
    r.set_defaults(fn=cmd_run)
    s = sub.add_parser("score", help="score an existing answers file without the model (judged benchmarks ask the "
                                     "judge; a rerun pays nothing twice)",
                       description="Writes OUT/scores.json (and OUT/reviews.jsonl, OUT/replies.jsonl when judged).")
    s.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS), help="which benchmark's scoring")
    s.add_argument("--data", required=True, help="benchmark file or official release file/directory")
    s.add_argument("--answers", required=True, help="answers JSONL (question_id, text), e.g. eval run's "
                                                    "OUT/answers.jsonl or LLaVA's answer file")
    s.add_argument("--image_root", help="directory the record images are relative to (ko_open's judge sees them; "
                                        "default: the current directory)")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--instruction", help="the short-answer line the answers were asked with (prompts only; default: "
                                         "the benchmark's)")
    add_lang_args(s)
    add_review_args(s)
    s.set_defaults(fn=cmd_score)
    u = sub.add_parser("submit", help="write a test-set upload file (VQAv2 test-dev JSON, VizWiz test JSON, "
                                      "MMBench / MMBench-CN .xlsx or .tsv) as LLaVA's conversion scripts do")
    u.add_argument("--benchmark", required=True, choices=("vqav2", "vizwiz", "mmbench"),
                   help="the benchmark whose submission format to write")
    u.add_argument("--data", required=True, help="the test questions: VQAv2 question JSONL, VizWiz test.json, "
                                                 "MMBench test TSV")
    u.add_argument("--answers", required=True, help="answers JSONL (eval run's OUT/answers.jsonl)")
    u.add_argument("--out", required=True, help="upload file (.json; .xlsx or .tsv for mmbench)")
    u.set_defaults(fn=cmd_submit)
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
    j.add_argument("--word_limit", type=int, help="cut both answers to this many words first (default: no cut; "
                                                  "the paper's 30-word runs limit the answers when they are "
                                                  "generated: infer generate --word_limit 30)")
    j.add_argument("--protocol", choices=("xllava", "swap"), default="xllava",
                   help="xllava: the paper's single order and A/B/similar question, no extra instructions; swap: "
                        "both orders, combined")
    j.add_argument("--cache", help="judgement cache JSONL (default OUT/judge_cache.jsonl; share it across runs)")
    add_client_args(j, "", "judge model (vision-capable)")
    j.add_argument("--no_progress", action="store_true", help="no progress bar")
    j.set_defaults(fn=cmd_judge)
    c = sub.add_parser("chart", help="win/tie/loss PNG (a bar per model pair) and table of several judge runs")
    c.add_argument("summaries", nargs="+", help="summary.json files of judge runs")
    c.add_argument("--out", required=True, help="PNG path")
    c.set_defaults(fn=cmd_chart)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    return run_subcommand(build_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
