"""Stage-2 sample path speed per CPU core: ours vs a LLaVA-style reference (transformers CLIPImageProcessor +
LlamaTokenizer) on the same JPEG files and conversations. One pass over the samples per call, both sides in
turn (interleaved, median and min-max; the process pinned to one CPU and torch to one thread: bench/harness.py).
Prints samples/s and the ratio, then a JSON report.

    python bench/data_bench.py [--samples 150] [--width 640 --height 480] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import harness  # noqa: E402
from data_fixtures import QA, save_hf_llama_tokenizer, train_llama_style_spm  # noqa: E402

from xllava_jax.data import formats  # noqa: E402
from xllava_jax.data.images import PAD_COLOR  # noqa: E402
from xllava_jax.data.processing import SampleProcessor  # noqa: E402
from xllava_jax.data.sequences import collate  # noqa: E402
from xllava_jax.data.templates import VICUNA_SYSTEM  # noqa: E402
from xllava_jax.tokenizer.spm import load_tokenizer  # noqa: E402

MAX_LEN, N_IMG = 2048, 576


def make_dataset(root: Path, n: int, w: int, h: int) -> Path:
    """n JPEG photos-like images and LLaVA records with 2-4 turn conversations (en/ko/zh)."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    base = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    lines = []
    for i in range(n):
        img = Image.fromarray(np.roll(base, i, axis=1)).resize((w, h), Image.BILINEAR)
        img.save(root / "img" / f"{i}.jpg", quality=90)
        lang = ("en", "ko", "zh")[i % 3]
        conv = []
        for j, (q, a) in enumerate(QA[lang] * 2):
            conv += [{"from": "human", "value": ("<image>\n" if j == 0 else "") + q}, {"from": "gpt", "value": a * 3}]
        lines.append(json.dumps({"id": str(i), "image": f"img/{i}.jpg", "conversations": conv}, ensure_ascii=False))
    (root / "data.jsonl").write_text("\n".join(lines), encoding="utf-8")
    return root / "data.jsonl"


def ours(records, tok) -> callable:
    """Our path: SampleProcessor (decode, pad, CLIP, template, tokenize) + right padding."""
    proc = SampleProcessor(tok, "vicuna_v1", MAX_LEN, N_IMG)

    def run(rec):
        ex = proc(rec)
        return collate([[ex]], 1, MAX_LEN, tok.pad_id, 1, (336, 336, 3))
    return run


def reference(hf_dir: Path, image_root: Path) -> callable:
    """LLaVA's train.py path: expand2square + CLIPImageProcessor, conversation string, tokenizer_image_token,
    masking by re-tokenizing rounds (the -2 offsets), padding."""
    import torch
    from transformers import CLIPImageProcessor, LlamaTokenizer

    proc = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    tok = LlamaTokenizer.from_pretrained(hf_dir, legacy=True)
    image_id = tok.convert_tokens_to_ids("<image>")

    def expand2square(img):
        w, h = img.size
        if w == h:
            return img
        s = max(w, h)
        res = Image.new(img.mode, (s, s), PAD_COLOR)
        res.paste(img, ((s - w) // 2, (s - h) // 2))
        return res

    def tokenizer_image_token(prompt):
        chunks = [tok(c).input_ids for c in prompt.split("<image>")]
        ids = chunks[0]
        for c in chunks[1:]:
            ids += [image_id] * N_IMG + c[1:]
        return ids

    def run(rec):
        img = expand2square(Image.open(image_root / rec["image"]).convert("RGB"))
        pixels = proc.preprocess(img, return_tensors="pt")["pixel_values"][0]
        conv = rec["conversations"]
        prompt = VICUNA_SYSTEM + " "
        for t in conv:
            prompt += ("USER: " + t["value"] + " ") if t["from"] == "human" else ("ASSISTANT: " + t["value"] + "</s>")
        ids = torch.tensor(tokenizer_image_token(prompt))
        target = ids.clone()
        cur = 1
        target[:cur] = -100
        for rou in prompt.split("</s>"):
            if not rou:
                break
            parts = rou.split(" ASSISTANT: ")
            rlen = len(tokenizer_image_token(rou))
            ilen = len(tokenizer_image_token(parts[0] + " ASSISTANT: ")) - 2
            target[cur:cur + ilen] = -100
            cur += rlen
        ids = torch.nn.functional.pad(ids[:MAX_LEN], (0, MAX_LEN - len(ids[:MAX_LEN])), value=tok.pad_token_id)
        return ids, target, pixels
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=150)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--repeats", type=int, default=5, help="timed passes per side (after one warm-up pass)")
    args = p.parse_args()
    harness.pin_threads(1)  # per core: one CPU, one torch thread
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        spm = train_llama_style_spm(d / "tokenizer")
        (d / "hf").mkdir()
        hf_dir = save_hf_llama_tokenizer(spm, d / "hf")
        data = make_dataset(d / "ds", args.samples, args.width, args.height)
        records = formats.load_llava(data, image_root=str(d / "ds"))
        raw = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
        ours_fn, ref_fn = ours(records, load_tokenizer(hf_dir)), reference(hf_dir, d / "ds")
        result = harness.compare(lambda: [ours_fn(r) for r in records], lambda: [ref_fn(r) for r in raw],
                                 args.repeats, label="sample path")
    rates = {side: {k: round(args.samples / v, 1) for k, v in result[f"{side}_s"].items() if k != "n"}
             for side in ("ours", "peer")}
    for r in rates.values():  # the slowest pass has the lowest rate
        r["min"], r["max"] = r["max"], r["min"]
    report = {**harness.environment(), "samples": args.samples, "image": f"{args.width}x{args.height}",
              "ours_samples_per_s": rates["ours"], "llava_style_samples_per_s": rates["peer"],
              "ours_over_llava_style": result["peer_over_ours"], "load": result["load"]}
    print(f"stage-2 sample path, {args.width}x{args.height} JPEG, 1 core, max_len {MAX_LEN}, {N_IMG} image tokens")
    print(f"  xllava_jax   : {rates['ours']['median']:8.1f} samples/s per core "
          f"(min-max {rates['ours']['min']}-{rates['ours']['max']})")
    print(f"  LLaVA-style  : {rates['peer']['median']:8.1f} samples/s per core "
          f"(min-max {rates['peer']['min']}-{rates['peer']['max']}; transformers CLIPImageProcessor + LlamaTokenizer)")
    print(f"  ratio        : {result['peer_over_ours']:8.2f}x (median pass time, LLaVA-style / ours)")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
