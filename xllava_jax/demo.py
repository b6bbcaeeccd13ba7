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
import shutil
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


ASSETS_VERSION = 2  # bump when the assets that the same settings make change (2: held-out text of its own)
FINGERPRINT_FILE = "assets.json"  # beside the assets: the settings (and ASSETS_VERSION) that made them


def asset_settings(num_train: int, num_eval: int, image_size: int, seed: int, base_vocab: int,
                   new_pieces: int) -> dict:
    """The fingerprint of the demo assets: what made the dataset, and what made the tokenizers from it."""
    return {"version": ASSETS_VERSION,
            "dataset": {"num_train": num_train, "num_eval": num_eval, "image_size": image_size, "seed": seed},
            "tokenizers": {"base_vocab": base_vocab, "new_pieces": new_pieces}}


def read_fingerprint(root: Path) -> dict | None:
    """The settings recorded beside assets under `root` (None when there is no readable record)."""
    try:
        return json.loads((root / FINGERPRINT_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def setting_changes(old: dict | None, new: dict, part: str) -> str:
    """What differs between two fingerprints for `part` ("dataset" or "tokenizers"), in words."""
    if old is None:
        return "no settings record"
    if old.get("version") != new["version"]:
        return f"asset format {old.get('version')} -> {new['version']}"
    before = old.get(part) or {}
    return ", ".join(f"{k} {before.get(k)} -> {v}" for k, v in new[part].items() if before.get(k) != v)


def remove(*paths: Path) -> None:
    """Delete files and directory trees (missing ones are fine)."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def prepare(root: str | Path, num_train: int = 600, num_eval: int = 60, image_size: int = 64,
            base_vocab: int = 600, new_pieces: int = 300, seed: int = 0) -> dict[str, Path]:
    """Dataset, English tokenizer (root/tokenizer_en) and its ko/zh expansion (root/tokenizer, an HF
    tokenizer directory), and root/tokenizer_report.json.

    The settings that made them are recorded in root/assets.json: assets made with the same settings are
    reused; a changed setting (or a new ASSETS_VERSION) regenerates what depends on it and logs why."""
    from xllava_jax.tokenizer.expand import expand_tokenizer, format_expansion
    from xllava_jax.tokenizer.report import format_report, read_lines, save_report, tokenizer_report
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    settings = asset_settings(num_train, num_eval, image_size, seed, base_vocab, new_pieces)
    old = read_fingerprint(root)
    paths = synthetic.dataset_paths(root)
    base, expanded, report_path = root / "tokenizer_en" / "tokenizer.model", root / "tokenizer", root / "tokenizer_report.json"
    same = old is not None and old.get("version") == settings["version"]
    dataset_files = [v for k, v in paths.items() if k != "root"]
    keep_data = same and old.get("dataset") == settings["dataset"] and all(p.exists() for p in dataset_files)
    keep_tokenizers = keep_data and old.get("tokenizers") == settings["tokenizers"] and all(
        p.exists() for p in (base, expanded / "tokenizer.model", report_path))
    if keep_tokenizers:
        log.info("demo assets in %s: reusing them (settings unchanged: %s)", root, FINGERPRINT_FILE)
        return asset_paths(root, paths)
    remove(root / FINGERPRINT_FILE)  # a run stopped half-way must not leave a record of what is not there
    if not keep_data:
        if old is not None or paths["questions"].exists():
            log.info("demo assets in %s: dataset settings changed (%s); regenerating the dataset and tokenizers",
                     root, setting_changes(old, settings, "dataset") or "files missing")
        remove(*dataset_files, root / "images")
        synthetic.write_dataset(root, num_train, num_eval, image_size, seed)
    elif old is not None:
        log.info("demo assets in %s: tokenizer settings changed (%s); regenerating the tokenizers", root,
                 setting_changes(old, settings, "tokenizers") or "files missing")
    remove(root / "tokenizer_en", expanded, root / "text_ko_zh.txt", report_path)
    template_line = f"{VICUNA_SYSTEM} USER: ASSISTANT:"
    train_tokenizer(read_lines(paths["text_en"]) + [template_line] * 50, base, base_vocab)
    corpus = synthetic.write_lines(root / "text_ko_zh.txt",
                                   [line for la in ("ko", "zh") for line in read_lines(paths[f"text_{la}"])])
    log.info("tokenizer expansion: %s", format_expansion(
        expand_tokenizer(base, expanded, train_corpus=corpus, new_pieces=new_pieces, num_threads=1)))
    report = tokenizer_report(base, expanded / "tokenizer.model",
                              {la: paths[f"heldout_text_{la}"] for la in synthetic.LANGS})
    save_report(report, report_path)
    log.info("tokens per character on held-out text:\n%s", format_report(report))
    (root / FINGERPRINT_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return asset_paths(root, paths)


def asset_paths(root: Path, paths: dict[str, Path]) -> dict[str, Path]:
    """The dataset paths plus the tokenizers and the tokenizer report."""
    return {**paths, "tokenizer_en": root / "tokenizer_en" / "tokenizer.model", "tokenizer": root / "tokenizer",
            "tokenizer_report": root / "tokenizer_report.json", "fingerprint": root / FINGERPRINT_FILE}


def configure(config: ml_collections.ConfigDict, workdir: Path) -> tuple[ml_collections.ConfigDict, dict]:
    """The demo config(s) pointed at the assets (written by process 0 under data.root, default DIR/data):
    data roots, and tokenizer paths relative to the asset root. Returns (config, asset paths)."""
    config = ml_collections.ConfigDict(config.to_dict())
    stages = [config[n] for n in config.stages] if config.stages else [config]
    root = Path(stages[0].data.root or workdir / "data")
    if jax.process_index() == 0:
        before = read_fingerprint(root)
        paths = prepare(root)
        runs = [n for n in (config.stages or ()) if (Path(workdir) / n).exists()]
        if runs and read_fingerprint(root) != before:
            log.warning("demo: the assets in %s were made again, but %s already holds stage runs (%s) trained on "
                        "the old ones, which resume as they are; use a new --workdir to train on the new assets",
                        root, workdir, ", ".join(runs))
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


def processor_accuracy(hf_dir: Path, model: Any, tok: Any, records: list[dict], image_root: Path, template: str,
                       answers_file: Path, max_new_tokens: int = 16) -> dict:
    """The export used the standard way (AutoProcessor, its chat template, greedy generate) on the held-out
    questions: accuracy per language, and how many prompt ids and answers equal our engine's (answers_file)."""
    from PIL import Image

    from xllava_jax.convert.verify import verify_processor
    from xllava_jax.data.images import image_path
    from xllava_jax.jsonl import read_jsonl
    from xllava_jax.eval.benchmarks import build_questions
    from xllava_jax.eval.registry import get_benchmark
    from xllava_jax.eval.runner import score_answers
    from xllava_jax.infer.prompts import num_image_tokens, question_prompt
    bench = get_benchmark("gqa")
    questions = build_questions(bench, records, "", "en")
    ours = {r["question_id"]: r["text"] for r in read_jsonl(answers_file)}
    inputs = [(q.text, Image.open(image_path(q.image, str(image_root))) if q.image else None) for q in questions]
    our_ids = [question_prompt(tok, get_template(template), q.text, q.image is not None, num_image_tokens(model))
               for q in questions]
    check = verify_processor(hf_dir, inputs, our_ids, [ours[q.question_id] for q in questions], max_new_tokens)
    answers = dict(zip((q.question_id for q in questions), check.pop("answers")))
    scores = score_answers(bench, questions, answers)
    return {"accuracy": {la: s["accuracy"] for la, s in scores["by_language"].items()}, **check}


def tokens_per_char(report: dict) -> dict[str, dict[str, float]]:
    """{lang: {before, after, ratio}} from a tokenizer report."""
    return {la: {"before": r["before"]["tokens_per_char"], "after": r["after"]["tokens_per_char"],
                 "ratio": r["tokens_per_char_ratio"]} for la, r in report["languages"].items()}


def kind_accuracy(records: list[dict], answers_path: Path) -> dict:
    """Held-out accuracy per question kind (GQA exact match, as the eval scores it), over all languages and per
    language: {"by_kind": {kind: acc}, "by_language_and_kind": {lang: {kind: acc}}}."""
    from xllava_jax.jsonl import read_jsonl
    from xllava_jax.eval.metrics import gqa_match
    answers = {r["question_id"]: r["text"] for r in read_jsonl(answers_path)}
    hits: dict[tuple[str, str], list[bool]] = {}
    for r in records:
        hits.setdefault((r["lang"], r["kind"]), []).append(gqa_match(answers[r["question_id"]], r["answer"]))

    def mean(keys: list[tuple[str, str]]) -> float:
        return float(np.mean([h for k in keys for h in hits[k]]))

    kinds, langs = sorted({k for _, k in hits}), sorted({la for la, _ in hits})
    return {"by_kind": {kind: mean([k for k in hits if k[1] == kind]) for kind in kinds},
            "by_language_and_kind": {la: {kind: mean([(la, kind)]) for kind in kinds if (la, kind) in hits}
                                     for la in langs}}


def finish(workdir: Path, checkpoint: str, paths: dict[str, Path], template: str, seconds: dict[str, float]
           ) -> dict:
    """Held-out accuracy per language, the HF export and its check, timings: DIR/demo_report.json."""
    from xllava_jax.convert.hf import save_hf_llava
    from xllava_jax.convert.verify import verify_llava_export
    from xllava_jax.jsonl import read_jsonl
    from xllava_jax.eval.runner import ANSWERS_FILE, evaluate
    from xllava_jax.infer.generate import GenerationConfig
    from xllava_jax.checkpoint import carried_tokenizer
    from xllava_jax.infer.loading import load_model, load_tokenizer_for
    start = time.perf_counter()
    model, params = load_model(checkpoint)
    tok = load_tokenizer_for(checkpoint)  # the tokenizer the checkpoint carries
    records = list(read_jsonl(paths["questions"]))
    scores = evaluate(model, params, tok, "gqa", records, image_root=str(paths["root"]), template=template,
                      config=GenerationConfig(max_new_tokens=16), out_dir=workdir / "eval", instruction="",
                      fresh=True)  # always the model just trained: earlier answers are discarded
    seconds["eval"] = time.perf_counter() - start
    start = time.perf_counter()
    hf_dir = workdir / "hf"
    save_hf_llava(model, params, hf_dir, tokenizer_dir=carried_tokenizer(checkpoint), template=template)
    check = verify_llava_export(model, params, hf_dir, export_inputs(model, tok, records[:4], paths["root"], template))
    if check["transformers_max_abs_diff"] is not None:  # torch is installed: the AutoProcessor path too
        check["processor"] = processor_accuracy(hf_dir, model, tok, records, paths["root"], template,
                                                workdir / "eval" / ANSWERS_FILE)
    seconds["export"] = time.perf_counter() - start
    kinds = kind_accuracy(records, workdir / "eval" / ANSWERS_FILE)
    baseline = synthetic.text_only_baseline(records)
    report = {
        "accuracy": {la: s["accuracy"] for la, s in scores["by_language"].items()},
        "accuracy_by_kind": kinds["by_kind"],
        "accuracy_by_language_and_kind": kinds["by_language_and_kind"],
        "chance": synthetic.chance_accuracy(),
        # the most common answer of each question kind (and language) on the held-out set: no image needed
        "text_only_baseline": baseline["by_language"],
        "text_only_baseline_by_kind": baseline["by_kind"],
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
    kinds = list(report.get("accuracy_by_kind", {}))
    lines = [f"{'lang':<6}{'accuracy':>10}{'text-only':>11}" + "".join(f"{k:>10}" for k in kinds)
             + f"{'tok/char before':>17}{'after':>8}"]
    for la, acc in report["accuracy"].items():
        t = report["tokens_per_char"].get(la, {})
        by_kind = report.get("accuracy_by_language_and_kind", {}).get(la, {})
        lines.append(f"{la:<6}{acc:>10.3f}{report.get('text_only_baseline', {}).get(la, float('nan')):>11.3f}"
                     + "".join(f"{by_kind.get(k, float('nan')):>10.3f}" for k in kinds)
                     + f"{t.get('before', float('nan')):>17.3f}{t.get('after', float('nan')):>8.3f}")
    if kinds:
        lines.append(f"{'all':<6}{'':>10}{'':>11}" + "".join(f"{report['accuracy_by_kind'][k]:>10.3f}" for k in kinds)
                     + "   (text-only per kind: " + ", ".join(
                         f"{k} {v:.3f}" for k, v in report.get("text_only_baseline_by_kind", {}).items()) + ")")
    e = report["export"]
    torch_diff = "n/a (no torch)" if e["transformers_max_abs_diff"] is None else f"{e['transformers_max_abs_diff']:.2e}"
    lines.append(f"chance {report['chance']:.3f}; HF export max |logit diff|: re-import "
                 f"{e['reimport_max_abs_diff']:.2e}, transformers {torch_diff} (max |logit| {e['max_abs_logit']:.2f})")
    if e.get("processor"):
        p = e["processor"]
        lines.append("HF export via AutoProcessor: accuracy " + ", ".join(f"{la} {a:.3f}" for la, a in p["accuracy"].items())
                     + f"; ids equal ours {p['ids_equal']}/{p['questions']}, answers {p['answers_equal']}/{p['questions']}")
    lines.append("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in report["seconds"].items())
                 + f"; total {report['total_seconds']:.0f}")
    return "\n".join(lines)
