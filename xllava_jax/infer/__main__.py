"""CLI: ``python -m xllava_jax.infer chat|generate``: interactive chat about an image, or answers for a question file."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Sequence

from xllava_jax.cli import add_subparsers, new_parser, run_subcommand
from xllava_jax.data.templates import get_template
from xllava_jax.infer.answers import answer_questions, checkpoint_identity, read_questions
from xllava_jax.infer.chat import Chat
from xllava_jax.infer.generate import DEFAULT_STEPS_PER_CALL, Engine, GenerationConfig
from xllava_jax.infer.prompts import with_word_limit
from xllava_jax.infer.loading import load_model, load_tokenizer_for
from xllava_jax.models.vocab import check_tokenizer
from xllava_jax.infer.prompts import DEFAULT_TEMPLATE, load_image, trained_prompting
from xllava_jax.infer.sampling import SamplingConfig
from xllava_jax.sharding import make_mesh


STEPS_PER_CALL_HELP = "decode steps per jitted call (0 = all at once"


def add_model_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    """Flags shared by every command that generates: model, tokenizer, template, sampling, batch, mesh."""
    p.add_argument("--checkpoint", required=True, help="Orbax checkpoint, training workdir (latest step) or HF dir")
    p.add_argument("--tokenizer", help="tokenizer.model or HF tokenizer dir (default: the one the checkpoint carries)")
    p.add_argument("--template", help="conversation template (vicuna_v1, llava_llama_2, ...; default: the one the "
                                      "checkpoint was trained with, else vicuna_v1)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="compute dtype (default: config's)")
    p.add_argument("--tensor_parallel", type=int, default=0,
                   help="shard the model over this many devices (tensor parallel); 0 = one device")
    p.add_argument("--max_new_tokens", type=int, default=max_new_tokens, help="most tokens generated per answer")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=0, help="sample from the k most likely tokens; 0 = all")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling mass; 1 = all")
    p.add_argument("--repetition_penalty", type=float, default=1.0, help="penalty on tokens already seen; 1 = none")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--batch_size", type=int, default=8, help="prompts generated together")
    p.add_argument("--steps_per_call", type=int, default=DEFAULT_STEPS_PER_CALL,
                   help=f"{STEPS_PER_CALL_HELP}; default: auto, all at once unless stop strings or streaming read "
                        "text between calls)")


def generation_config(args: argparse.Namespace, **overrides) -> GenerationConfig:
    """GenerationConfig from the shared flags."""
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p, args.repetition_penalty)
    cfg = GenerationConfig(args.max_new_tokens, sampling, tuple(args.stop), seed=args.seed,
                           batch_size=args.batch_size, steps_per_call=args.steps_per_call)
    return GenerationConfig(**{**cfg.__dict__, **overrides})


def build_engine(args: argparse.Namespace) -> Engine:
    """Model, params (sharded when asked), and its checked tokenizer."""
    mesh = make_mesh(data=1, fsdp=1, tensor=args.tensor_parallel) if args.tensor_parallel else None
    model, params = load_model(args.checkpoint, dtype=args.dtype, mesh=mesh)
    tokenizer = load_tokenizer_for(args.checkpoint, args.tokenizer)
    check_tokenizer(model.cfg, tokenizer)
    if args.template is None:  # the template the checkpoint was trained with
        args.template = trained_prompting(args.checkpoint).get("template", DEFAULT_TEMPLATE)
    return Engine(model, params, tokenizer, mesh)


def cmd_chat(args: argparse.Namespace) -> int:
    """Read user turns from stdin (one per line), stream each answer to stdout."""
    engine = build_engine(args)
    image = load_image(args.image, None, engine.model.cfg.vision.image_size) if args.image else None
    chat = Chat(engine, get_template(args.template), image, generation_config(args, batch_size=1))
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("USER: ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            chat.reset()
            continue
        if not line.strip():
            continue
        print("ASSISTANT: ", end="", flush=True)
        for delta in chat.ask(line.strip()):
            print(delta, end="", flush=True)
        print(flush=True)


def cmd_generate(args: argparse.Namespace) -> int:
    """Answer a LLaVA question file into an answer file (resumable)."""
    engine = build_engine(args)
    questions = [dataclasses.replace(q, text=with_word_limit(q.text, args.word_limit, q.metadata.get("lang", "en")))
                 for q in read_questions(args.questions)]
    written = answer_questions(engine, get_template(args.template), questions, args.out, image_root=args.image_root,
                               model_id=args.model_id or args.checkpoint, config=generation_config(args),
                               progress=not args.no_progress,
                               checkpoint=checkpoint_identity(engine.params, args.checkpoint))
    print(json.dumps({"questions": len(questions), "answered_now": written, "out": args.out}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The infer argument parser (subcommands)."""
    p = new_parser("python -m xllava_jax.infer", __doc__)
    sub = add_subparsers(p)
    c = sub.add_parser("chat", help="multi-turn chat (one user turn per stdin line; /reset, /exit)")
    add_model_args(c, max_new_tokens=512)
    c.add_argument("--image", help="image to talk about (default: none: text-only chat)")
    for action in c._actions:  # chat hands out every token as it comes
        if action.dest == "steps_per_call":
            action.default, action.help = 1, f"{STEPS_PER_CALL_HELP})"
    c.set_defaults(fn=cmd_chat)
    g = sub.add_parser("generate", help="answer a LLaVA question JSONL (question_id, image, text)")
    add_model_args(g, max_new_tokens=128)
    g.add_argument("--questions", required=True, help="question JSONL")
    g.add_argument("--image_root", help="directory the question images are relative to (default: none: as written)")
    g.add_argument("--out", required=True, help="answer JSONL (appended; answered ids are skipped)")
    g.add_argument("--model_id", help="model_id written in each answer (default: the checkpoint path)")
    g.add_argument("--word_limit", type=int, help="ask for answers of at most this many words (a line after each "
                                                  "question, in its `lang`; X-LLaVA's 30-word preference runs; "
                                                  "default: no limit)")
    g.add_argument("--no_progress", action="store_true", help="no progress bar")
    g.set_defaults(fn=cmd_generate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    return run_subcommand(build_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
