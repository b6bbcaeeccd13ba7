"""Model benchmark (not a test): forward+backward step time of our LLaVA against transformers'
PyTorch LLaVA on the same small config, weights and batch (interleaved, median and min-max, both on the
same pinned threads: bench/harness.py); and compile time with scan vs unrolled for 4 vs 32 decoder layers.

    python bench/model_bench.py [--repeats 5] [--compile_repeats 5] [--batch 4] [--text_len 96] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import harness  # noqa: E402
from xllava_jax.convert import hf as convert  # noqa: E402
from xllava_jax.models import CLIPVisionConfig, LlamaConfig, LlavaConfig, build_model, init_params  # noqa: E402


def small_config(layers: int = 4, scan: bool = True) -> LlavaConfig:
    """A LLaVA small enough for a CPU step, big enough that matmuls dominate."""
    return LlavaConfig(
        vision=CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                                image_size=224, patch_size=14, scan_layers=scan),
        text=LlamaConfig(vocab_size=4096, hidden_size=512, intermediate_size=1376, num_hidden_layers=layers,
                         num_attention_heads=8, num_key_value_heads=8, scan_layers=scan),
        image_token_id=4000, pad_token_id=4001)


def make_batch(cfg: LlavaConfig, batch: int, text_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Every row: one image's tokens then random text; next-token labels."""
    rng = np.random.default_rng(seed)
    n = cfg.num_image_tokens
    ids = rng.integers(3, 3900, size=(batch, n + text_len)).astype(np.int32)
    ids[:, 1:1 + n] = cfg.image_token_id
    size = cfg.vision.image_size
    return {"input_ids": ids, "pixel_values": rng.normal(size=(batch, size, size, 3)).astype(np.float32)}


def jax_step_fn(cfg: LlavaConfig):
    """jit(loss and grads w.r.t. all params)."""
    model = build_model(cfg)

    def loss_fn(params, input_ids, pixel_values):
        logits = model.apply({"params": params}, input_ids, pixel_values=pixel_values)
        logp = jax.nn.log_softmax(logits[:, :-1])
        return -jnp.mean(jnp.take_along_axis(logp, input_ids[:, 1:, None], axis=-1))

    return jax.jit(jax.value_and_grad(loss_fn))


def bench_step(repeats: int, batch_size: int, text_len: int) -> dict:
    """Ours vs PyTorch: forward+backward seconds per step on the same weights and batch, interleaved."""
    import torch
    import transformers

    cfg = small_config()
    params = init_params(cfg, jax.random.PRNGKey(0))
    batch = make_batch(cfg, batch_size, text_len)
    with tempfile.TemporaryDirectory() as tmp:
        convert.save_hf_llava(cfg, params, tmp)
        hf = transformers.LlavaForConditionalGeneration.from_pretrained(tmp, attn_implementation="sdpa")
    hf.train()
    step = jax_step_fn(cfg)
    ids = torch.from_numpy(batch["input_ids"].astype(np.int64))
    pixels = torch.from_numpy(batch["pixel_values"].transpose(0, 3, 1, 2).copy())

    def ours():
        jax.block_until_ready(step(params, batch["input_ids"], batch["pixel_values"]))

    def torch_step():
        hf.zero_grad(set_to_none=True)
        logits = hf(input_ids=ids, pixel_values=pixels).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()

    result = harness.compare(ours, torch_step, repeats, label="fwd+bwd")
    return {**result, "tokens_per_step": batch_size * batch["input_ids"].shape[1]}


def bench_compile(repeats: int, layers: tuple[int, ...] = (4, 32)) -> dict:
    """Seconds to lower+compile the fwd+bwd step, scanned and unrolled, per decoder depth (each variant in
    turn, `repeats` times; nothing is cached between compiles)."""
    def compile_fn(n: int, scan: bool):
        cfg = small_config(layers=n, scan=scan)
        batch = make_batch(cfg, 1, 16)
        abstract = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
        return lambda: jax_step_fn(cfg).lower(abstract, batch["input_ids"], batch["pixel_values"]).compile()

    fns = {f"{'scan' if scan else 'unrolled'}_{n}_layers": compile_fn(n, scan) for scan in (True, False) for n in layers}
    run = harness.interleave(fns, repeats, warmup=1, label="compile")
    out = {name: harness.summary(t, 2) for name, t in run["times"].items()}
    med = {name: s["median"] for name, s in out.items()}
    out["scan_ratio_32_vs_4"] = round(med["scan_32_layers"] / med["scan_4_layers"], 2)
    out["unrolled_ratio_32_vs_4"] = round(med["unrolled_32_layers"] / med["unrolled_4_layers"], 2)
    out["load"] = run["load"]
    return out


def main() -> None:
    """Run both benchmarks and print one JSON report."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="timed fwd+bwd steps per side (after one warm-up)")
    p.add_argument("--compile_repeats", type=int, default=5, help="timed compiles per variant (0: skip)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--text_len", type=int, default=96)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for both sides (default: all)")
    args = p.parse_args()
    harness.pin_threads(args.threads)
    report = {**harness.environment(), "step": bench_step(args.repeats, args.batch, args.text_len)}
    if args.compile_repeats:
        report["compile"] = bench_compile(args.compile_repeats)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
