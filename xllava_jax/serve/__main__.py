"""CLI: ``python -m xllava_jax.serve --checkpoint DIR``: an OpenAI-compatible chat API and a chat page at `/`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from xllava_jax.cli import UserError, guarded, new_parser, pop_verbose
from xllava_jax.data.templates import get_template
from xllava_jax.infer.__main__ import build_engine
from xllava_jax.infer.generate import Engine, GenerationConfig
from xllava_jax.infer.prompts import num_image_tokens
from xllava_jax.infer.slots import SlotEngine
from xllava_jax.models.llava import LlavaConfig
from xllava_jax.serve.app import Service, create_app
from xllava_jax.serve.images import ImagePolicy
from xllava_jax.serve.scheduler import ModelLoop

log = logging.getLogger("xllava_jax.serve")


def build_parser() -> argparse.ArgumentParser:
    """The serve argument parser."""
    p = new_parser("python -m xllava_jax.serve", __doc__)
    p.add_argument("--checkpoint", required=True, help="Orbax checkpoint, training workdir (latest step) or HF dir")
    p.add_argument("--tokenizer", help="tokenizer.model or HF tokenizer dir (default: the checkpoint dir)")
    p.add_argument("--template", help="conversation template (default: the one the checkpoint was trained with, "
                                      "else vicuna_v1)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="compute dtype (default: config's)")
    p.add_argument("--model_name", help="the model id clients name (default: the checkpoint directory's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--max_batch", type=int, default=16, help="KV-cache slots: requests generated at once")
    p.add_argument("--max_len", type=int, default=4096, help="tokens per slot: padded prompt + answer")
    p.add_argument("--decode_steps", type=int, default=8,
                   help="decode steps per device call (new requests join and text is handed out between calls)")
    p.add_argument("--max_tokens", type=int, default=512, help="answer length when a request gives no max_tokens")
    p.add_argument("--queue_size", type=int, default=64, help="requests that may wait for a slot (then HTTP 429)")
    p.add_argument("--request_timeout", type=float, default=600.0, help="seconds before a request is ended (408)")
    p.add_argument("--image_root", help="local image paths are allowed only under this directory (default: none)")
    p.add_argument("--no_image_urls", action="store_true", help="refuse http(s) image URLs (default: fetch them)")
    p.add_argument("--max_image_bytes", type=int, default=20 << 20, help="largest encoded image accepted (413)")
    p.add_argument("--image_fetch_timeout", type=float, default=10.0, help="seconds to fetch an image URL")
    p.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"], help="log level")
    return p


def load_engine(checkpoint: str, tokenizer: str | None, template: str | None, dtype: str | None) -> tuple[Engine, str]:
    """(engine, template name) of a checkpoint, exactly as `infer chat` loads them."""
    args = argparse.Namespace(checkpoint=checkpoint, tokenizer=tokenizer, template=template, dtype=dtype,
                              tensor_parallel=0)
    engine = build_engine(args)
    return engine, args.template


def build_service(args: argparse.Namespace) -> Service:
    """The model loop and request settings of the parsed flags."""
    for flag in ("max_batch", "max_len", "decode_steps", "max_tokens", "queue_size", "max_image_bytes"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag}={getattr(args, flag)} must be >= 1")
    if args.image_root is not None and not os.path.isdir(args.image_root):
        raise FileNotFoundError(f"--image_root {args.image_root} is not a directory")
    engine, template = load_engine(args.checkpoint, args.tokenizer, args.template, args.dtype)
    eos = engine.eos_ids(GenerationConfig())
    slots = SlotEngine(engine, args.max_batch, args.max_len, eos)
    cfg = engine.model.cfg
    return Service(
        loop=ModelLoop(slots, engine.tokenizer, eos, args.queue_size, args.decode_steps),
        tokenizer=engine.tokenizer, template=get_template(template),
        model_name=args.model_name or os.path.basename(os.path.normpath(args.checkpoint)),
        num_image_tokens=num_image_tokens(engine.model),
        image_size=cfg.vision.image_size if isinstance(cfg, LlavaConfig) else 0,
        images=ImagePolicy(args.image_root, not args.no_image_urls, args.max_image_bytes, args.image_fetch_timeout),
        default_max_tokens=args.max_tokens, request_timeout_s=args.request_timeout)


def serve(args: argparse.Namespace) -> int:
    """Load the model and serve until interrupted."""
    import uvicorn

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = build_service(args)
    log.info("serving %s (template %s, %d slots of %d tokens) on http://%s:%d", service.model_name,
             service.template.name, args.max_batch, args.max_len, args.host, args.port)
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    argv, verbose = pop_verbose(argv)
    args = build_parser().parse_args(argv)
    return guarded(lambda: serve(args), verbose)


if __name__ == "__main__":
    sys.exit(main())
