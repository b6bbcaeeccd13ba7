"""Decode benchmark (not a test).

CPU mode (default): decode tokens/s of our KV-cache generation at batch 1 and 32 for a small
random LLaMA, against transformers' `generate` on the same weights (ratio = ours / theirs), for
several `steps_per_call` settings (1 = a jitted step per Python loop iteration; 0 = the whole
decode in one lax.while_loop).

GPU mode (`--gpu`, automatic when a GPU is present): a LLaMA-2-7B-shaped random model in bf16 at
batch 1; decode time per token against the HBM-bandwidth bound (weight bytes / bandwidth).

    python bench/decode_bench.py [--new_tokens 64] [--prompt_len 32]
    python bench/decode_bench.py --gpu [--bandwidth_tbs 3.35]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import jax
import numpy as np

from xllava_jax.infer.generate import Engine, GenerationConfig
from xllava_jax.models import LlamaConfig, build_model, init_params

HBM_TBS = {"H100": 3.35, "H200": 4.8, "A100": 2.0, "GH200": 4.0}  # TB/s by device-kind substring


def small_config() -> LlamaConfig:
    """A small LLaMA (30M params) whose CPU decode is dominated by matmuls."""
    return LlamaConfig(vocab_size=4096, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                       num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024)


def prompts(batch: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """Random prompts of one length."""
    return np.random.default_rng(seed).integers(3, vocab, size=(batch, length)).tolist()


def time_ours(engine: Engine, batch: list[list[int]], new_tokens: int, steps_per_call: int, repeats: int) -> float:
    """Median seconds of a full generate (prefill + new_tokens) after a warm-up (compilation) run."""
    cfg = GenerationConfig(max_new_tokens=new_tokens, eos_ids=(), batch_size=len(batch), steps_per_call=steps_per_call)
    engine.generate(batch, config=cfg)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.generate(batch, config=cfg)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def decode_seconds(total: callable, new_tokens: int) -> float:
    """Seconds per decoded token: (time for new_tokens - time for 1 token) / (new_tokens - 1), prefill cancels."""
    return (total(new_tokens) - total(1)) / (new_tokens - 1)


def bench_cpu(new_tokens: int, prompt_len: int, repeats: int, batches=(1, 32), steps=(1, 16, 0)) -> dict:
    """Ours (each steps_per_call) vs transformers generate, decode tokens/s at each batch size."""
    import torch
    import transformers

    from xllava_jax.convert.hf import load_hf_llama

    cfg = small_config()
    hf_cfg = transformers.LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                                      intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
                                      num_attention_heads=cfg.num_attention_heads,
                                      num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=1024)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        model, params = load_hf_llama(d)
    engine = Engine(model, params)
    results = {"torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
               "new_tokens": new_tokens, "prompt_len": prompt_len, "batches": {}}
    for b in batches:
        batch = prompts(b, prompt_len, cfg.vocab_size)
        ids = torch.tensor(batch)

        def hf_time(n: int) -> float:
            kwargs = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
            with torch.no_grad():
                hf.generate(input_ids=ids, **kwargs)
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    hf.generate(input_ids=ids, **kwargs)
                    times.append(time.perf_counter() - start)
            return float(np.median(times))

        theirs = b / decode_seconds(hf_time, new_tokens)
        row = {"transformers_tok_s": round(theirs, 1)}
        for k in steps:
            ours = b / decode_seconds(lambda n: time_ours(engine, batch, n, k, repeats), new_tokens)
            row[f"ours_steps_per_call_{k}_tok_s"] = round(ours, 1)
            row[f"ratio_steps_per_call_{k}"] = round(ours / theirs, 2)
        results["batches"][str(b)] = row
        print(json.dumps({f"batch {b}": row}), flush=True)
    return results


def bench_gpu(new_tokens: int, prompt_len: int, repeats: int, bandwidth_tbs: float | None) -> dict:
    """7B-shaped LLaMA in bf16, batch 1: decode seconds per token vs weight bytes / HBM bandwidth."""
    cfg = LlamaConfig(dtype="bfloat16", param_dtype="bfloat16", attention="xla")
    params = jax.jit(lambda k: init_params(cfg, k))(jax.random.PRNGKey(0))
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(params))
    kind = jax.devices()[0].device_kind
    if bandwidth_tbs is None:
        bandwidth_tbs = next((v for k, v in sorted(HBM_TBS.items(), key=lambda kv: -len(kv[0])) if k in kind), None)
        if bandwidth_tbs is None:
            raise SystemExit(f"unknown HBM bandwidth of {kind!r}; pass --bandwidth_tbs")
    engine = Engine(build_model(cfg), params)
    batch = prompts(1, prompt_len, cfg.vocab_size)
    out = {"device": kind, "weight_gb": round(weight_bytes / 1e9, 2), "bandwidth_tbs": bandwidth_tbs}
    bound = weight_bytes / (bandwidth_tbs * 1e12)
    for k in (16, 0):
        per_token = decode_seconds(lambda n: time_ours(engine, batch, n, k, repeats), new_tokens)
        out[f"steps_per_call_{k}"] = {"ms_per_token": round(per_token * 1e3, 3), "tok_s": round(1 / per_token, 1),
                                      "bound_ms": round(bound * 1e3, 3),
                                      "pct_of_bandwidth_bound": round(100 * bound / per_token, 1)}
    return out


def main() -> None:
    """Run the CPU or GPU benchmark and print JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gpu", action="store_true", help="GPU mode (default when a GPU is present)")
    p.add_argument("--cpu", action="store_true", help="CPU mode even when a GPU is present")
    p.add_argument("--bandwidth_tbs", type=float, help="HBM bandwidth in TB/s (default: by device kind)")
    args = p.parse_args()
    gpu = args.gpu or (not args.cpu and jax.default_backend() == "gpu")
    if gpu:
        result = bench_gpu(args.new_tokens, args.prompt_len, args.repeats, args.bandwidth_tbs)
    else:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        result = bench_cpu(args.new_tokens, args.prompt_len, args.repeats)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
