"""Model benchmark (not a test): forward+backward step time of our LLaVA against transformers'
PyTorch LLaVA on the same small config, weights and batch; and compile time with scan for
4 vs 32 decoder layers.

    python bench/model_bench.py [--steps 10] [--batch 4] [--text_len 96]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

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


def time_calls(fn, steps: int) -> float:
    """Median seconds per call after one warm-up call."""
    fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def bench_step(steps: int, batch_size: int, text_len: int) -> dict:
    """Ours vs PyTorch: forward+backward seconds per step on the same weights and batch."""
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
    ours = time_calls(lambda: jax.block_until_ready(step(params, batch["input_ids"], batch["pixel_values"])), steps)

    ids = torch.from_numpy(batch["input_ids"].astype(np.int64))
    pixels = torch.from_numpy(batch["pixel_values"].transpose(0, 3, 1, 2).copy())

    def torch_step():
        hf.zero_grad(set_to_none=True)
        logits = hf(input_ids=ids, pixel_values=pixels).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()

    theirs = time_calls(torch_step, steps)
    tokens = batch_size * batch["input_ids"].shape[1]
    return {"ours_s": ours, "torch_s": theirs, "speedup_vs_torch": theirs / ours, "tokens_per_step": tokens,
            "torch_threads": torch.get_num_threads()}


def bench_compile(layers: tuple[int, ...] = (4, 32)) -> dict:
    """Seconds to lower+compile the train step, scanned and unrolled, per decoder depth."""
    out = {}
    for scan in (True, False):
        for n in layers:
            cfg = small_config(layers=n, scan=scan)
            batch = make_batch(cfg, 1, 16)
            abstract = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
            start = time.perf_counter()
            jax_step_fn(cfg).lower(abstract, batch["input_ids"], batch["pixel_values"]).compile()
            out[f"{'scan' if scan else 'unrolled'}_{n}_layers_s"] = time.perf_counter() - start
    out["scan_ratio_32_vs_4"] = out["scan_32_layers_s"] / out["scan_4_layers_s"]
    out["unrolled_ratio_32_vs_4"] = out["unrolled_32_layers_s"] / out["unrolled_4_layers_s"]
    return out


def environment() -> dict:
    """Where a benchmark ran: device, CPU count, Python and jax versions (the head of every report)."""
    return {"device": str(jax.devices()[0]), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "jax": jax.__version__}


def main() -> None:
    """Run both benchmarks and print one JSON report."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--text_len", type=int, default=96)
    args = p.parse_args()
    report = {**environment(), "step": bench_step(args.steps, args.batch, args.text_len),
              "compile": bench_compile()}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
