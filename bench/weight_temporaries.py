"""Compiled temporaries against weight bytes at LLaVA-1.5-7B shapes (a script, not a test): whole-weight dtype
conversions must not sit outside the layer loop.

    python bench/weight_temporaries.py [--what cpu,aot] [--tokens 617] [--topology v5p-8]

cpu: XLA:CPU memory analysis (compile only, ShapeDtypeStruct inputs, nothing allocated) of the forward of a
     617-token image + prompt input, the inference prefill into a cache of prompt + 64 slots and the decode,
     with bf16 params and bf16 compute, and of the training forward + backward (loss over the logits, gradient
     of every param) with float32 params and bf16 compute. Passes when temporaries < 10% of the weight bytes +
     what the activations need (an estimate printed beside it: logits, one layer's float32 weights, attention
     scores, the cache).
aot: the AOT memory report (xllava_jax.aot.run: the TPU compiler's memory_analysis of the shipped training
     step, configs/llava15_7b.py:stage2, float32 params, bf16 compute, remat full, at one 2048-token row per
     chip so the activations stay small) for `--topology`: temporaries per device against the params per device
     (a bf16 copy of every weight would add half the params' bytes).
Prints one JSON report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from xllava_jax.infer.generate import decode, prefill  # noqa: E402
from xllava_jax.infer.sampling import SamplingConfig  # noqa: E402
from xllava_jax.models.clip import CLIPVisionConfig  # noqa: E402
from xllava_jax.models.llama import LlamaConfig  # noqa: E402
from xllava_jax.models.llava import LlavaConfig  # noqa: E402
from xllava_jax.models.params import abstract_params, build_model  # noqa: E402

NEW_TOKENS = 64
SHARE = 0.10  # allowed temporaries beyond the activations, as a share of the weight bytes


def llava7b(param_dtype: str, dtype: str = "bfloat16") -> LlavaConfig:
    """LLaVA-1.5-7B (LLaMA-2-7B, vocab 32064, CLIP-L/14-336)."""
    ex = dict(dtype=dtype, param_dtype=param_dtype)
    return LlavaConfig(vision=CLIPVisionConfig(**ex), text=LlamaConfig(vocab_size=32064, **ex))


def sds(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype)


def activation_bytes(cfg: LlavaConfig, tokens: int, train: bool) -> int:
    """A generous estimate of what the activations need at once (not counting weights or their gradients)."""
    t, v = cfg.text, cfg.vision
    logits = tokens * t.vocab_size * 4 * (3 if train else 1)
    layer_f32 = 4 * (4 * t.hidden_size ** 2 + 3 * t.hidden_size * t.intermediate_size)  # one layer's weights, f32
    head_f32 = 4 * t.vocab_size * t.hidden_size
    scores = 4 * 4 * max(t.num_attention_heads * tokens ** 2, v.num_attention_heads * (v.num_patches + 1) ** 2)
    per_token = 4 * (8 * t.hidden_size + 3 * t.intermediate_size)
    saved = t.num_hidden_layers * tokens * t.hidden_size * 4 if train else 0
    cache = 2 * t.num_hidden_layers * (tokens + NEW_TOKENS) * t.hidden_size * 2
    return logits + layer_f32 + head_f32 + scores + tokens * per_token + saved + cache


def row(name: str, compiled, weights: int, activations: int, seconds: float) -> dict:
    temp = compiled.memory_analysis().temp_size_in_bytes
    budget = SHARE * weights + activations
    return {"program": name, "weights_gb": round(weights / 1e9, 3), "temp_gb": round(temp / 1e9, 3),
            "activations_gb": round(activations / 1e9, 3), "budget_gb": round(budget / 1e9, 3),
            "ok": temp < budget, "compile_s": round(seconds, 1)}


def timed_compile(lowered):
    start = time.perf_counter()
    return lowered.compile(), time.perf_counter() - start


def cpu_rows(tokens: int) -> list[dict]:
    """Forward, prefill and decode (bf16 params) and the training forward + backward (float32 params)."""
    out = []
    cfg = llava7b("bfloat16")
    model, params = build_model(cfg), abstract_params(cfg)
    weights = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    ids, pixels = sds((1, tokens), jnp.int32), sds((1, 336, 336, 3), jnp.float32)
    act = activation_bytes(cfg, tokens, False)
    forward = jax.jit(lambda p, i, x: model.apply({"params": p}, i, x))
    compiled, s = timed_compile(forward.lower(params, ids, pixels))
    out.append(row("forward bf16/bf16", compiled, weights, act, s))
    args = (params, ids, sds((1, tokens), jnp.int32), sds((1, tokens), jnp.int32), pixels, sds((1,), jnp.int32),
            sds((2,), jnp.uint32), sds((), jnp.int32))
    kw = dict(max_new_tokens=NEW_TOKENS, sampling=SamplingConfig())
    compiled, s = timed_compile(prefill.lower(model, *args, **kw))
    out.append(row("prefill bf16/bf16", compiled, weights, act, s))
    state = jax.eval_shape(lambda *a: prefill(model, *a, **kw), *args)
    compiled, s = timed_compile(decode.lower(model, params, state, sds((1,), jnp.int32), sds((), jnp.int32),
                                             sampling=SamplingConfig()))
    out.append(row("decode bf16/bf16", compiled, weights, act, s))

    cfg = llava7b("float32")
    model, params = build_model(cfg), abstract_params(cfg)
    weights = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    train = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, remat_policy="full"))
    model = build_model(train)
    loss = lambda p, i, x: jnp.mean(model.apply({"params": p}, i, x) ** 2)  # noqa: E731
    compiled, s = timed_compile(jax.jit(jax.value_and_grad(loss)).lower(params, ids, pixels))
    out.append(row("train forward+backward f32/bf16", compiled, weights, activation_bytes(cfg, tokens, True), s))
    return out


def aot_rows(topology: str) -> list[dict]:
    """The AOT memory report of the shipped 7B stage-2 training step on `topology`."""
    import importlib.util
    from xllava_jax import aot
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "llava15_7b.py")
    spec = importlib.util.spec_from_file_location("llava15_7b", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("stage2")
    config.train.update(batch_size=aot.parse_topology(topology).chips, grad_accum=1)  # one row per chip
    start = time.perf_counter()
    summary, attention = aot.run(config, topology, "train", exact_cost=False)
    b = summary["bytes_per_device"]
    rows = [{"program": f"AOT train step {topology} ({attention})", "params_gb_per_device": round(b["params"] / 1e9, 3),
             "temp_gb_per_device": round(b["temporaries"] / 1e9, 3),
             "temp_over_params": round(b["temporaries"] / b["params"], 3), "fits": summary["fits"],
             "compile_s": round(time.perf_counter() - start, 1)}]
    # Per decoder layer: the step's temporaries grow by the layer's float32 gradient (as many bytes as its
    # params) plus its saved activations; a bf16 copy of the weights made outside the loop would add half more.
    devices, cfg = aot.tpu_devices(aot.parse_topology(topology)), aot.model_for(config)
    sized = {n: aot.compile_train(config, dataclasses.replace(cfg, text=dataclasses.replace(
        cfg.text, num_hidden_layers=n)), devices)["bytes_per_device"] for n in (2, 4)}
    d_temp, d_params = (sized[4][k] - sized[2][k] for k in ("temporaries", "params"))
    rows.append({"program": f"AOT train step {topology}, per decoder layer (4 vs 2 layers)",
                 "params_mb_per_device": round(d_params / 2 / 1e6, 1), "temp_mb_per_device": round(d_temp / 2 / 1e6, 1),
                 "temp_over_params": round(d_temp / d_params, 3)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--what", default="cpu,aot")
    p.add_argument("--tokens", type=int, default=617)
    p.add_argument("--topology", default="v5p-8")
    a = p.parse_args()
    rows = []
    if "cpu" in a.what:
        rows += cpu_rows(a.tokens)
    if "aot" in a.what:
        rows += aot_rows(a.topology)
    print(json.dumps({"tokens": a.tokens, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
