"""The demo (configs/demo.py): the X-LLaVA recipe in miniature on the synthetic multilingual dataset.

`prepare` writes the dataset (data/synthetic.py), trains an English-only SentencePiece tokenizer and
expands it with Korean and Chinese pieces (tokenizer/expand.py, the Chinese-LLaMA corpus method),
and measures the gain. `finish` answers the held-out questions in each language, exports the final
model to Hugging Face and verifies the export, and writes DIR/demo_report.json.
"""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from xllava_jax.data import synthetic
from xllava_jax.data.templates import VICUNA_SYSTEM, get_template

log = logging.getLogger(__name__)

REPORT_FILE = "demo_report.json"


def train_tokenizer(lines: list[str], path: Path, vocab_size: int) -> Path:
    """A LLaMA-style SentencePiece BPE model (unk 0, bos 1, eos 2, byte fallback) written to `path`."""
    import sentencepiece as spm
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, byte_fallback=True, split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True, num_threads=1,
        minloglevel=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return path


def prepare(root: str | Path, num_train: int = 600, num_eval: int = 60, image_size: int = 64,
            base_vocab: int = 600, new_pieces: int = 300) -> dict[str, Path]:
    """Dataset, English tokenizer (root/tokenizer_en) and its ko/zh expansion (root/tokenizer, an HF
    tokenizer directory), and root/tokenizer_report.json; files already there are reused."""
    from xllava_jax.tokenizer.expand import expand_tokenizer, format_expansion
    from xllava_jax.tokenizer.report import format_report, read_lines, save_report, tokenizer_report
    root = Path(root)
    paths = synthetic.dataset_paths(root)
    if not paths["questions"].exists():
        synthetic.write_dataset(root, num_train, num_eval, image_size)
    base = root / "tokenizer_en" / "tokenizer.model"
    if not base.exists():
        template_line = f"{VICUNA_SYSTEM} USER: ASSISTANT:"
        train_tokenizer(read_lines(paths["text_en"]) + [template_line] * 50, base, base_vocab)
    expanded = root / "tokenizer"
    if not (expanded / "tokenizer.model").exists():
        corpus = synthetic.write_lines(root / "text_ko_zh.txt",
                                       [line for la in ("ko", "zh") for line in read_lines(paths[f"text_{la}"])])
        log.info("tokenizer expansion: %s", format_expansion(
            expand_tokenizer(base, expanded, train_corpus=corpus, new_pieces=new_pieces, num_threads=1)))
    if not (root / "tokenizer_report.json").exists():
        report = tokenizer_report(base, expanded / "tokenizer.model",
                                  {la: paths[f"heldout_text_{la}"] for la in synthetic.LANGS})
        save_report(report, root / "tokenizer_report.json")
        log.info("tokens per character on held-out text:\n%s", format_report(report))
    return {**paths, "tokenizer_en": base, "tokenizer": expanded, "tokenizer_report": root / "tokenizer_report.json"}


def configure(config: ml_collections.ConfigDict, workdir: Path) -> tuple[ml_collections.ConfigDict, dict]:
    """The demo config(s) pointed at the assets (written by process 0 under data.root, default DIR/data):
    data roots, and tokenizer paths relative to the asset root. Returns (config, asset paths)."""
    config = ml_collections.ConfigDict(config.to_dict())
    stages = [config[n] for n in config.stages] if config.stages else [config]
    root = Path(stages[0].data.root or workdir / "data")
    if jax.process_index() == 0:
        paths = prepare(root)
    if jax.process_count() > 1:  # the others read what process 0 wrote
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("demo assets")
        paths = prepare(root)
    for c in stages:
        for d in (c.data, c.eval_data):
            d.root = d.root or str(root)
        c.tokenizer = str(root / (c.tokenizer or "tokenizer"))
    return config, paths


def export_inputs(model: Any, tok: Any, records: list[dict], image_root: Path, template: str) -> dict[str, np.ndarray]:
    """A right-padded image-question batch (the export check's inputs)."""
    from xllava_jax.infer.prompts import load_image, num_image_tokens, question_prompt
    n = num_image_tokens(model)
    prompts = [question_prompt(tok, get_template(template), r["text"], True, n) for r in records]
    length = max(len(p) for p in prompts)
    ids = np.full((len(prompts), length), tok.pad_id, np.int32)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, :len(p)], mask[i, :len(p)] = p, 1
    pixels = np.stack([load_image(r["image"], str(image_root), model.cfg.vision.image_size) for r in records])
    return {"input_ids": ids, "pixel_values": pixels, "attention_mask": mask}


def tokens_per_char(report: dict) -> dict[str, dict[str, float]]:
    """{lang: {before, after, ratio}} from a tokenizer report."""
    return {la: {"before": r["before"]["tokens_per_char"], "after": r["after"]["tokens_per_char"],
                 "ratio": r["tokens_per_char_ratio"]} for la, r in report["languages"].items()}


def finish(workdir: Path, checkpoint: str, paths: dict[str, Path], template: str, seconds: dict[str, float]
           ) -> dict:
    """Held-out accuracy per language, the HF export and its check, timings: DIR/demo_report.json."""
    from xllava_jax.convert.hf import save_hf_llava
    from xllava_jax.convert.verify import verify_llava_export
    from xllava_jax.datagen.store import read_jsonl
    from xllava_jax.eval.runner import evaluate
    from xllava_jax.infer.generate import GenerationConfig
    from xllava_jax.infer.loading import load_model
    from xllava_jax.tokenizer.spm import load_tokenizer
    start = time.perf_counter()
    model, params = load_model(checkpoint)
    tok = load_tokenizer(paths["tokenizer"])
    records = list(read_jsonl(paths["questions"]))
    scores = evaluate(model, params, tok, "gqa", records, image_root=str(paths["root"]), template=template,
                      config=GenerationConfig(max_new_tokens=16), out_dir=workdir / "eval", instruction="")
    seconds["eval"] = time.perf_counter() - start
    start = time.perf_counter()
    hf_dir = workdir / "hf"
    save_hf_llava(model, params, hf_dir, tokenizer_dir=paths["tokenizer"])
    check = verify_llava_export(model, params, hf_dir, export_inputs(model, tok, records[:4], paths["root"], template))
    seconds["export"] = time.perf_counter() - start
    report = {
        "accuracy": {la: s["accuracy"] for la, s in scores["by_language"].items()},
        "chance": synthetic.chance_accuracy(),
        "questions": scores["questions"],
        "tokens_per_char": tokens_per_char(json.loads(paths["tokenizer_report"].read_text(encoding="utf-8"))),
        "export": {"dir": str(hf_dir), **check},
        "seconds": seconds,
        "total_seconds": sum(seconds.values()),
    }
    (workdir / REPORT_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(format_report(report))
    return report


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, dict]:
    """The demo: assets, then the stage list (train.loop.run), then (for the whole list) held-out eval,
    HF export and DIR/demo_report.json. Returns the per-stage results."""
    from xllava_jax.train.loop import run as run_stages
    workdir = Path(workdir)
    start = time.perf_counter()
    config, paths = configure(config, workdir)
    seconds = {"assets": time.perf_counter() - start}
    results = run_stages(config, workdir)
    seconds.update({name: r["seconds"] for name, r in results.items()})
    previous = results[list(results)[-1]]["checkpoint"] if results else ""
    if previous and config.stages:  # the whole demo, not one of its stages
        if jax.process_count() > 1:
            log.warning("demo: held-out eval and HF export run single-process; skipped in this %d-process run",
                        jax.process_count())
            return results
        finish(workdir, previous, paths, config[config.stages[-1]].data.template, seconds)
    return results


def format_report(report: dict) -> str:
    """The short table the demo prints."""
    lines = [f"{'lang':<6}{'accuracy':>10}{'tok/char before':>17}{'after':>8}"]
    for la, acc in report["accuracy"].items():
        t = report["tokens_per_char"].get(la, {})
        lines.append(f"{la:<6}{acc:>10.3f}{t.get('before', float('nan')):>17.3f}{t.get('after', float('nan')):>8.3f}")
    e = report["export"]
    torch_diff = "n/a (no torch)" if e["transformers_max_abs_diff"] is None else f"{e['transformers_max_abs_diff']:.2e}"
    lines.append(f"chance {report['chance']:.3f}; HF export max |logit diff|: re-import "
                 f"{e['reimport_max_abs_diff']:.2e}, transformers {torch_diff} (max |logit| {e['max_abs_logit']:.2f})")
    lines.append("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in report["seconds"].items())
                 + f"; total {report['total_seconds']:.0f}")
    return "\n".join(lines)
