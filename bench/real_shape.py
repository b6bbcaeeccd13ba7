"""LLaVA-1.5-7B shapes on one host (benchmark, not a test): ours against transformers on the same llava-hf directory.

Builds (bench/real_shape_build.py) or reuses (`--dir`) a LLaVA-1.5-7B-shaped llava-hf directory: random bf16
weights in one safetensors file, streamed to disk (never a float32 copy of the model). Each side then runs in its
own process, so peak memory is per side, with the weight files read into the page cache just before (untimed); the
sides alternate (ours, transformers, ours, ... `--rounds`), each pinned to the same CPUs (bench/harness.py). Per
side: load seconds and peak RSS; prefill seconds of the 617-token image prompt (576 image tokens + 41 text; ours:
the jitted prefill of `infer.generate`, theirs: the forward pass with a KV cache); batch-1 greedy decode tokens/s
of a 32-token text prompt ((t(n) - t(1)) / (n - 1), prefill cancels; ours: `Engine.generate`, theirs: `generate`);
and the logits of the full image prompt, compared in the parent (max difference over the logit scale, argmax
agreement). The bound: bytes read per decoded token (every language-model weight but the embedding table, which a
step gathers one row of) over this host's copy bandwidth (bytes read + written per second by a large NumPy copy,
measured here).

    python bench/real_shape.py [--dir /path/to/llava-7b-hf] [--build_dir /tmp/llava7b] [--rounds 2] [--repeats 2]
        [--new_tokens 9] [--threads N] [--json out.json]

Each 7B side needs ~15 GB; run it alone (`flock` a shared lock where several jobs share the host).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
import numpy as np  # noqa: E402
import real_shape_build  # noqa: E402

IMAGE_TOKEN = 32000  # llava-hf's image token id
TINY = dict(layers=2, vision_layers=2, hidden=256, mlp=512, heads=4)  # --tiny: a smoke run of the script
DECODE_PROMPT = 32  # tokens of the text prompt whose decode rate is measured


def copy_bandwidth(gb: float = 1.0, repeats: int = 5) -> float:
    """Bytes read + written per second by the best of `repeats` NumPy copies of a `gb`-GB array."""
    a = np.ones(int(gb * 1e9) // 8)
    b = np.empty_like(a)
    best = min(harness.timed(lambda: np.copyto(b, a)) for _ in range(repeats))
    return 2 * a.nbytes / best


def decode_read_bytes(directory: Path) -> int:
    """Bytes a decode step reads: the language model's weights but its embedding table (one row is gathered)."""
    from safetensors import safe_open
    total = 0
    with safe_open(str(directory / "model.safetensors"), framework="numpy") as f:
        for key in f.keys():
            if "language_model" in key and "embed_tokens" not in key:
                total += 2 * int(np.prod(f.get_slice(key).get_shape()))
    return total


def image_prompt(seed: int = 0) -> np.ndarray:
    """input_ids [1, 617]: BOS, 4 text tokens, 576 image tokens, 36 text tokens (a chat turn's shape)."""
    rng = np.random.default_rng(seed)
    ids = np.concatenate([[1], rng.integers(3, IMAGE_TOKEN, 4), np.full(576, IMAGE_TOKEN),
                          rng.integers(3, IMAGE_TOKEN, 36)])
    return ids[None].astype(np.int64)


def pixels(size: int, seed: int = 1) -> np.ndarray:
    """One random CLIP-normalised-looking image, NHWC float32."""
    return np.random.default_rng(seed).normal(size=(1, size, size, 3)).astype(np.float32)


def peak_rss_gb() -> float:
    """This process's peak resident memory so far (GB; VmHWM, which unlike ru_maxrss starts afresh at exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def decode_rates(run, new_tokens: int, repeats: int) -> list[float]:
    """Tokens/s of `repeats` alternating (n, 1)-token generates after a warm-up of each: (n - 1) / (t_n - t_1)."""
    run(new_tokens), run(1)
    rates = []
    for _ in range(repeats):
        tn, t1 = harness.timed(lambda: run(new_tokens)), harness.timed(lambda: run(1))
        rates.append((new_tokens - 1) / (tn - t1))
    return rates


def side_ours(directory: Path, new_tokens: int, repeats: int, out: Path) -> dict:
    """Our side: load, prefill of the image prompt, decode rate, logits of the image prompt."""
    import jax
    import jax.numpy as jnp

    from xllava_jax.infer.generate import Engine, GenerationConfig, prefill
    from xllava_jax.infer.loading import load_model
    from xllava_jax.infer.sampling import SamplingConfig
    from transformers import LlavaConfig  # noqa: F401  reading config.json imports it: not load time, as theirs

    start = time.perf_counter()
    model, params = load_model(directory, dtype="bfloat16")
    jax.block_until_ready(params)
    load_s, load_rss = time.perf_counter() - start, peak_rss_gb()
    ids, image = image_prompt(), pixels(model.cfg.vision.image_size)
    engine = Engine(model, params)
    args = (jnp.asarray(ids, jnp.int32), jnp.ones(ids.shape, jnp.int32), jnp.arange(ids.shape[1])[None],
            jnp.asarray(image), jnp.asarray([2], jnp.int32), jax.random.PRNGKey(0))
    kw = dict(max_new_tokens=new_tokens, sampling=SamplingConfig())
    compiled = prefill.lower(model, params, *args, **kw).compile()
    prefill_temp_gb = compiled.memory_analysis().temp_size_in_bytes / 1e9
    prefill_times = [harness.timed(lambda: jax.block_until_ready(compiled(params, *args))) for _ in range(repeats)]
    forward = jax.jit(lambda p, i, x: model.apply({"params": p}, i, x))
    logits = np.asarray(forward(params, args[0], args[3]))
    np.save(out / "ours_logits.npy", logits)
    del logits
    text = np.random.default_rng(2).integers(3, IMAGE_TOKEN, DECODE_PROMPT).tolist()

    def run(n: int):
        engine.generate([text], config=GenerationConfig(max_new_tokens=n, eos_ids=(), batch_size=1))

    rates = decode_rates(run, new_tokens, repeats)
    return {"load_s": load_s, "load_peak_rss_gb": load_rss, "prefill_s": prefill_times, "decode_tok_s": rates,
            "peak_rss_gb": peak_rss_gb(), "prefill_temp_gb": round(prefill_temp_gb, 3)}


def side_transformers(directory: Path, new_tokens: int, repeats: int, out: Path) -> dict:
    """transformers' side: from_pretrained in bf16, forward with a cache (prefill), generate, logits."""
    import torch
    import transformers

    start = time.perf_counter()
    model = transformers.LlavaForConditionalGeneration.from_pretrained(str(directory), dtype=torch.bfloat16,
                                                                       local_files_only=True).eval()
    load_s, load_rss = time.perf_counter() - start, peak_rss_gb()
    ids = torch.from_numpy(image_prompt())
    image = torch.from_numpy(np.ascontiguousarray(pixels(model.config.vision_config.image_size).transpose(0, 3, 1, 2)))
    image = image.to(torch.bfloat16)

    def forward(**kw):
        with torch.no_grad():
            return model(input_ids=ids, pixel_values=image, **kw)

    prefill_times = [harness.timed(lambda: forward(use_cache=True, logits_to_keep=1)) for _ in range(repeats)]
    np.save(out / "transformers_logits.npy", forward(use_cache=False).logits.float().numpy())
    text = torch.from_numpy(np.random.default_rng(2).integers(3, IMAGE_TOKEN, (1, DECODE_PROMPT)))

    def run(n: int):
        with torch.no_grad():
            model.generate(input_ids=text, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    rates = decode_rates(run, new_tokens, repeats)
    return {"load_s": load_s, "load_peak_rss_gb": load_rss, "prefill_s": prefill_times, "decode_tok_s": rates,
            "peak_rss_gb": peak_rss_gb()}


SIDES = {"ours": side_ours, "transformers": side_transformers}


def warm_page_cache(directory: Path) -> float:
    """Read every weight file of `directory` once (page cache warm, as the issue's load goal assumes; our loader
    evicts what it has copied when memory cannot hold both, transformers' maps it); returns the seconds taken."""
    start = time.perf_counter()
    for path in sorted(directory.glob("*.safetensors")):
        with open(path, "rb", buffering=0) as f:
            while f.read(16 << 20):
                pass
    return time.perf_counter() - start


def run_side(name: str, args, out: Path) -> dict:
    """One side in a fresh process (its own peak memory), its weights in the page cache first; returns its
    result."""
    result = out / f"{name}.json"
    print(f"{name}: page cache warmed in {warm_page_cache(args.dir):.1f} s", file=sys.stderr, flush=True)
    cmd = [sys.executable, os.path.abspath(__file__), "--side", name, "--dir", str(args.dir), "--out", str(out),
           "--new_tokens", str(args.new_tokens), "--repeats", str(args.repeats)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    subprocess.run(cmd, check=True)
    return json.loads(result.read_text())


def parity(out: Path) -> dict:
    """Ours vs transformers' logits of the image prompt: max |diff| over max |theirs|, argmax agreement."""
    ours, theirs = np.load(out / "ours_logits.npy")[0], np.load(out / "transformers_logits.npy")[0]
    scale = float(np.abs(theirs).max())
    return {"max_abs_diff": round(float(np.abs(ours - theirs).max()), 4), "logit_scale": round(scale, 3),
            "max_diff_over_scale": round(float(np.abs(ours - theirs).max()) / scale, 5),
            "argmax_agreement": round(float(np.mean(ours.argmax(-1) == theirs.argmax(-1))), 4),
            "positions": int(ours.shape[0])}


def summarize(runs: dict, read_bytes: int, bandwidth: float) -> dict:
    """Per side: load, peak RSS, prefill, decode (median, min-max over every round and repeat); the ratios."""
    side = {}
    for name, results in runs.items():
        pick = lambda key: [x for r in results for x in (r[key] if isinstance(r[key], list) else [r[key]])]  # noqa
        side[name] = {k: harness.summary(pick(k), 3) for k in ("load_s", "peak_rss_gb", "load_peak_rss_gb",
                                                                "prefill_s", "decode_tok_s")}
    bound_s = read_bytes / bandwidth
    temps = [r["prefill_temp_gb"] for r in runs.get("ours", []) if "prefill_temp_gb" in r]
    if temps:
        side["ours"]["prefill_temp_gb"] = max(temps)  # XLA's memory analysis of the compiled prefill
    report = {"sides": side, "decode_read_gb": round(read_bytes / 1e9, 2),
              "copy_bandwidth_gb_s": round(bandwidth / 1e9, 2), "bound_s_per_token": round(bound_s, 3)}
    if len(side) == 2:
        med = lambda name, key: side[name][key]["median"]  # noqa: E731
        report["prefill_ratio"] = round(med("transformers", "prefill_s") / med("ours", "prefill_s"), 3)
        report["decode_ratio"] = round(med("ours", "decode_tok_s") / med("transformers", "decode_tok_s"), 3)
    for name in side:
        report[f"{name}_share_of_bound"] = round(side[name]["decode_tok_s"]["median"] * bound_s, 3)
    return report


def table(report: dict) -> str:
    """The markdown rows of bench/README.md."""
    s = report["sides"]
    fmt = lambda x: f"{x['median']} ({x['min']}-{x['max']})"  # noqa: E731
    rows = ["| figure | ours | transformers |", "|---|---|---|"]
    for key, label in (("load_s", "load s"), ("load_peak_rss_gb", "peak RSS after load, GB"),
                       ("peak_rss_gb", "peak RSS, GB"), ("prefill_s", "prefill s (617 tokens)"),
                       ("decode_tok_s", "decode tokens/s (batch 1)")):
        rows.append(f"| {label} | " + " | ".join(fmt(s[n][key]) if n in s else "-" for n in ("ours", "transformers"))
                    + " |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, help="an existing llava-hf directory (default: build one at --build_dir)")
    p.add_argument("--build_dir", type=Path, default=Path(tempfile.gettempdir()) / "llava7b_bench")
    p.add_argument("--tiny", action="store_true", help="tiny widths (a smoke run of the script)")
    p.add_argument("--sides", default="ours,transformers")
    p.add_argument("--rounds", type=int, default=2, help="processes per side, alternating")
    p.add_argument("--repeats", type=int, default=2, help="timed prefills and decode pairs per process")
    p.add_argument("--new_tokens", type=int, default=9)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, help="write the report here too")
    p.add_argument("--work", type=Path, help="keep each side's results and logits here (default: a temporary dir)")
    p.add_argument("--resume", action="store_true", help="reuse the results of sides already in --work (one round)")
    p.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    harness.pin_threads(args.threads)
    if args.side:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        result = SIDES[args.side](args.dir, args.new_tokens, args.repeats, args.out)
        (args.out / f"{args.side}.json").write_text(json.dumps(result))
        return
    if args.dir is None:
        args.dir = args.build_dir
        if not (args.dir / "model.safetensors").exists():
            cfg = real_shape_build.llava7b(**(TINY if args.tiny else {}))
            summary = real_shape_build.build(args.dir, cfg)
            print(f"built {args.dir}: {summary['bytes'] / 1e9:.2f} GB in {summary['seconds']} s", file=sys.stderr)
    env = harness.environment()
    bandwidth = copy_bandwidth()
    sides = args.sides.split(",")
    runs = {name: [] for name in sides}
    with tempfile.TemporaryDirectory() as tmp:
        out = args.work or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        load_before = harness.loadavg()
        for _ in range(args.rounds):
            for name in sides:
                done = out / f"{name}.json"
                reuse = args.resume and done.exists()
                runs[name].append(json.loads(done.read_text()) if reuse else run_side(name, args, out))
                print(json.dumps({name: runs[name][-1], "reused": reuse}), file=sys.stderr, flush=True)
        load_after = harness.loadavg()
        report = {**env, **summarize(runs, decode_read_bytes(args.dir), bandwidth),
                  "load": {"before": round(load_before, 2), "after": round(load_after, 2)}}
        if len(sides) == 2:
            report["parity"] = parity(out)
    print(json.dumps(report, indent=2))
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
