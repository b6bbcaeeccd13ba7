"""Command line: Hugging Face directories <-> Orbax checkpoints.

  python -m xllava_jax.convert hf-to-orbax --hf_dir D --out CKPT
  python -m xllava_jax.convert hf-to-orbax --llama_dir L --clip_dir C --out CKPT   (fresh LLaVA, stage 1 start)
  python -m xllava_jax.convert orbax-to-hf --checkpoint CKPT --out D [--tokenizer_dir T] [--dtype bfloat16]
  python -m xllava_jax.convert grow-vocab (--checkpoint CKPT | --hf_dir D) (--vocab_size N | --tokenizer DIR)
      [--method mean|mean_cov|normal] [--pad_to_multiple 64] --out OUT
"""

from __future__ import annotations

import argparse
import logging
import sys

import jax

from xllava_jax.cli import UserError, add_subparsers, new_parser, require_host_memory, run_subcommand
from xllava_jax.convert import grow, hf, hf_config
from xllava_jax.convert.layout import LLAVA_PREFIXES
from xllava_jax.models.layers import DTYPES
from xllava_jax.models.llava import LlavaConfig
from xllava_jax.models.params import abstract_params, with_param_dtype
from xllava_jax.models.vocab import INIT_METHODS
from xllava_jax import checkpoint

log = logging.getLogger("xllava_jax.convert")
DEFAULT_EXPORT_TEMPLATE = "vicuna_v1"  # chat template of an export whose checkpoint records none
# Host memory of a conversion, measured at 7B (bench/README.md). hf-to-orbax never holds the model: Orbax makes each
# param (streamed from the mapped file) when it reaches it, writes it and drops it, holding that param, its host
# copy and its encode buffer: SAVE_LEAF_FACTOR x the largest param + 1 GB (7B: 10.3 GB measured). orbax-to-hf reads
# one param at a time and holds at most a safetensors shard of views, the param being split and Orbax's read
# buffer: a shard + EXPORT_LEAF_FACTOR x the largest param, whatever the model's size (7B: 12.1 GB measured).
SAVE_LEAF_FACTOR = 3.5
EXPORT_LEAF_FACTOR = 3


def leaf_bytes(cfg) -> list[int]:
    """Bytes of each of `cfg`'s params."""
    return [x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(abstract_params(cfg))]


def hf_to_orbax(args: argparse.Namespace) -> None:
    """Import an HF LLaVA or LLaMA directory (or LLaMA + CLIP) into an Orbax checkpoint."""
    if args.llama_dir and not args.clip_dir:
        raise UserError("--llama_dir needs --clip_dir")
    if args.hf_dir:
        kind = hf.read_config_json(args.hf_dir)["model_type"]
        loader = {"llava": hf.load_hf_llava, "llama": hf.load_hf_llama}.get(kind)
        if loader is None:
            raise UserError(f"{args.hf_dir}: model_type {kind!r} is not supported (llava or llama); "
                            "for a CLIP tower use --llama_dir with --clip_dir")
        cfg = hf.model_config(args.hf_dir, hf_config.llava_from_hf if kind == "llava" else hf_config.llama_from_hf)
        largest = max(leaf_bytes(with_param_dtype(cfg, args.dtype) if args.dtype else cfg))
        require_host_memory(int(SAVE_LEAF_FACTOR * largest) + (1 << 30), f"hf-to-orbax of {args.hf_dir}")
        # pending device arrays: each streamed from the mapped file when Orbax reaches it, written, then freed
        model, params = loader(args.hf_dir, hf.placement(), pending=True,
                               **({"param_dtype": args.dtype} if args.dtype else {}))
        cfg = model.cfg
    else:
        model, params = hf.init_llava_from_hf(args.llama_dir, args.clip_dir, seed=args.seed,
                                              projector_type=args.projector_type, new_rows_init=args.new_rows_init)
        cfg = model.cfg
        if args.dtype:
            params, cfg = hf.cast_params(params, args.dtype), with_param_dtype(cfg, args.dtype)
    out = checkpoint.save_params(args.out, params, cfg)
    log.info("wrote %s (%s)", out, type(cfg).__name__)


def export_template(path: str) -> str:
    """The chat template an export of the checkpoint at `path` gets: the one it was trained with, else
    DEFAULT_EXPORT_TEMPLATE (a checkpoint that training did not write)."""
    return checkpoint.read_record(path).template or DEFAULT_EXPORT_TEMPLATE


def orbax_to_hf(args: argparse.Namespace) -> None:
    """Export an Orbax checkpoint (a step or a workdir: its latest step) to an HF directory, with the tokenizer
    and conversation template it was trained with unless flags say otherwise."""
    source = checkpoint.load_config(args.checkpoint)
    cast = args.dtype and args.dtype != hf.params_dtype(abstract_params(source))
    largest = max(leaf_bytes(source))
    need = min(hf.host_bytes(source), hf.DEFAULT_MAX_SHARD_BYTES) + (EXPORT_LEAF_FACTOR + bool(cast)) * largest
    require_host_memory(need, f"orbax-to-hf of {args.checkpoint}")
    cfg, params = checkpoint.lazy_params(args.checkpoint)  # each param is read when the writer reaches it
    tokenizer_dir = args.tokenizer_dir or checkpoint.carried_tokenizer(args.checkpoint)
    template = args.template if args.template is not None else export_template(args.checkpoint)
    if args.dtype:
        params, cfg = hf.cast_params(params, args.dtype), with_param_dtype(cfg, args.dtype)
    if isinstance(cfg, LlavaConfig):
        hf.save_hf_llava(cfg, params, args.out, tokenizer_dir=tokenizer_dir, layout=args.layout,
                         template=template or None)
    else:
        hf.save_hf_llama(cfg, params, args.out, tokenizer_dir=tokenizer_dir)
    log.info("wrote %s", args.out)


def run_grow(args: argparse.Namespace) -> None:
    """Grow the vocabulary of an Orbax checkpoint or an HF LLaMA directory."""
    target = grow.target_of(args.vocab_size, args.tokenizer)
    if args.checkpoint:
        cfg = grow.grow_checkpoint(args.checkpoint, args.out, target, args.method, args.seed, args.pad_to_multiple)
        text = getattr(cfg, "text", cfg)
        extra = f", image_token_id {cfg.image_token_id}, pad_token_id {cfg.pad_token_id}" if text is not cfg else ""
        print(f"wrote {args.out}: vocab_size {text.vocab_size}{extra}")
    else:
        config = grow.grow_hf_llama(args.hf_dir, args.out, target, args.method, args.seed, args.pad_to_multiple,
                                    tokenizer=args.tokenizer)
        print(f"wrote {args.out}: vocab_size {config['vocab_size']}")


def parser() -> argparse.ArgumentParser:
    """The argument parser of the convert command."""
    p = new_parser("python -m xllava_jax.convert", __doc__)
    sub = add_subparsers(p)
    a = sub.add_parser("hf-to-orbax", help="HF directory -> Orbax checkpoint")
    source = a.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf_dir", help="a LlavaForConditionalGeneration or LlamaForCausalLM directory")
    source.add_argument("--llama_dir", help="an HF LLaMA/Vicuna directory (with --clip_dir): a fresh LLaVA")
    a.add_argument("--clip_dir", help="an HF CLIPVisionModel or CLIPModel directory (needed with --llama_dir; "
                                      "default: none)")
    a.add_argument("--projector_type", default="mlp2x_gelu", help="projector of a fresh LLaVA")
    a.add_argument("--new_rows_init", default="mean", help="init of the <image>/<pad> rows: mean | mean_cov | normal")
    a.add_argument("--seed", type=int, default=0, help="seed of the fresh projector")
    a.add_argument("--dtype", choices=sorted(DTYPES), help="cast params (default: keep the checkpoint's dtype)")
    a.add_argument("--out", required=True, help="output checkpoint directory")
    a.set_defaults(fn=hf_to_orbax)
    b = sub.add_parser("orbax-to-hf", help="Orbax checkpoint -> HF directory")
    b.add_argument("--checkpoint", required=True, help="a checkpoint directory, or a workdir (latest step)")
    b.add_argument("--out", required=True, help="output HF directory (written whole or not at all)")
    b.add_argument("--tokenizer_dir", help="the checkpoint's HF tokenizer directory: exported to tokenize like "
                                           "training (legacy), with the processor config and chat template "
                                           "(default: the tokenizer the checkpoint carries, else none)")
    b.add_argument("--template", default=None,
                   help="the conversation template the model was trained with: the export's chat_template "
                        "(vicuna_v1, llava_llama_2, plain; '' for none; default: the checkpoint's training "
                        f"template, else {DEFAULT_EXPORT_TEMPLATE})")
    b.add_argument("--layout", default="llava-hf", choices=sorted(LLAVA_PREFIXES), help="LLaVA key layout")
    b.add_argument("--dtype", choices=sorted(DTYPES), help="cast params (default: keep the checkpoint's dtype)")
    b.set_defaults(fn=orbax_to_hf)
    g = sub.add_parser("grow-vocab", help="grow a checkpoint's embedding and LM head to a new vocabulary size")
    model = g.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="Orbax checkpoint (LLaVA or LLaMA kind), or a workdir (latest step)")
    model.add_argument("--hf_dir", help="transformers LlamaForCausalLM directory (safetensors)")
    size = g.add_mutually_exclusive_group(required=True)
    size.add_argument("--vocab_size", type=int, help="new vocabulary size (before padding)")
    size.add_argument("--tokenizer", help="HF tokenizer directory: its size (pieces + added tokens) and, for LLaVA, its "
                                 "<image>/<pad> ids; copied into an HF output")
    g.add_argument("--method", default="mean", choices=INIT_METHODS, help="initialisation of the new rows")
    g.add_argument("--pad_to_multiple", type=int, help="round the vocabulary up to a multiple (e.g. 64; default: "
                                                        "no rounding)")
    g.add_argument("--seed", type=int, default=0, help="seed of mean_cov / normal")
    g.add_argument("--out", required=True, help="output checkpoint or HF directory")
    g.set_defaults(fn=run_grow)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0, or 2 with one `error:` line for a bad input (nothing is written then)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_subcommand(parser, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
