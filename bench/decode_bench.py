"""Decode benchmark (not a test).

CPU mode (default): decode tokens/s of our KV-cache generation at batch 1 and 32 for a small
random LLaMA, against transformers' `generate` on the same weights (ratio = ours / theirs), for
several `steps_per_call` settings (None = the default, auto; 1 = a jitted step per Python loop iteration; 0 = the whole
decode in one lax.while_loop). Decode time per token = (time of new_tokens - time of 1 token) /
(new_tokens - 1), so prefill cancels; every generate of both sides runs in turn in each round
(interleaved, median and min-max over rounds, same pinned threads: bench/harness.py).

GPU mode (`--gpu`, automatic when a GPU is present): a LLaMA-2-7B-shaped random model in bf16 at
batch 1; decode time per token against the HBM-bandwidth bound (weight bytes / bandwidth).

    python bench/decode_bench.py [--new_tokens 64] [--prompt_len 32] [--repeats 5] [--threads N]
    python bench/decode_bench.py --gpu [--bandwidth_tbs 3.35]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from xllava_jax.infer.generate import Engine, GenerationConfig  # noqa: E402
from xllava_jax.models import LlamaConfig, build_model, init_params  # noqa: E402

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


def bench_cpu(new_tokens: int, prompt_len: int, repeats: int, batches=(1, 32), steps=(1, 16, 0, None)) -> dict:
    """Ours (each steps_per_call) vs transformers generate, decode tokens/s at each batch size, interleaved."""
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
    results = {"new_tokens": new_tokens, "prompt_len": prompt_len, "batches": {}}
    for b in batches:
        batch = prompts(b, prompt_len, cfg.vocab_size)
        ids = torch.tensor(batch)

        def hf_call(n: int):
            kwargs = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

            def call():
                with torch.no_grad():
                    hf.generate(input_ids=ids, **kwargs)
            return call

        def ours_call(n: int, k: int):
            config = GenerationConfig(max_new_tokens=n, eos_ids=(), batch_size=b, steps_per_call=k)
            return lambda: engine.generate(batch, config=config)

        sides = {"transformers": hf_call, **{f"ours_steps_per_call_{k}": (lambda n, k=k: ours_call(n, k)) for k in steps}}
        fns = {f"{name}@{n}": make(n) for name, make in sides.items() for n in (new_tokens, 1)}
        run = harness.interleave(fns, repeats, warmup=1, label=f"decode batch {b}")
        # tokens/s of each round: prefill cancels in (t(new_tokens) - t(1)) / (new_tokens - 1)
        rates = {name: [b * (new_tokens - 1) / (tn - t1) for tn, t1 in
                        zip(run["times"][f"{name}@{new_tokens}"], run["times"][f"{name}@1"])] for name in sides}
        theirs = statistics.median(rates["transformers"])
        row = {"transformers_tok_s": harness.summary(rates["transformers"], 1)}
        for k in steps:
            name = f"ours_steps_per_call_{k}"
            row[f"{name}_tok_s"] = harness.summary(rates[name], 1)
            row[f"ratio_steps_per_call_{k}"] = round(statistics.median(rates[name]) / theirs, 2)
        row["load"] = run["load"]
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
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (after one warm-up round)")
    p.add_argument("--gpu", action="store_true", help="GPU mode (default when a GPU is present)")
    p.add_argument("--cpu", action="store_true", help="CPU mode even when a GPU is present")
    p.add_argument("--threads", type=int, default=None, help="CPU mode: CPU threads for both sides (default: all)")
    p.add_argument("--bandwidth_tbs", type=float, help="HBM bandwidth in TB/s (default: by device kind)")
    args = p.parse_args()
    if not args.gpu:
        harness.pin_threads(args.threads)  # before jax starts its CPU client
    gpu = args.gpu or (not args.cpu and jax.default_backend() == "gpu")
    if gpu:
        result = bench_gpu(args.new_tokens, args.prompt_len, args.repeats, args.bandwidth_tbs)
    else:
        result = {**harness.environment(), **bench_cpu(args.new_tokens, args.prompt_len, args.repeats)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
