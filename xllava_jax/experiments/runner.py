"""Running a suite: the stage configs of each arm (train.defaults, as configs/demo.py builds them), each stage
trained once per seed and config (train.loop.run_stage; arms with the same stage share its checkpoint), the
held-out evaluation (eval.runner.evaluate), the modality gap (stage-2 eval_data) and Figure-5 features."""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import time
from pathlib import Path

import ml_collections
import numpy as np

from xllava_jax.experiments import world
from xllava_jax.experiments.suites import Arm, suite_arms
from xllava_jax.train.defaults import base_config, tiny_model

log = logging.getLogger(__name__)
DONE = "done.json"


def stage_base(stage: int, c: ml_collections.ConfigDict, tokenizer: Path, seed: int) -> ml_collections.ConfigDict:
    """A tiny-model stage config with the experiment's execution settings."""
    s = tiny_model(base_config(stage), **c.model.to_dict())
    s.seed = seed
    s.tokenizer = str(tokenizer)
    s.init.source = "previous"
    s.mesh.update(data=-1, fsdp=1, tensor=1)
    s.checkpoint.update(every_steps=10 ** 9, keep=1, async_save=False)  # the final step only
    s.log.update(every_steps=50, progress=False, tensorboard=False, peak_tflops=0.0)
    return s


def stage_configs(arm: Arm, c: ml_collections.ConfigDict, p: dict, seed: int) -> list[tuple[str, ml_collections.ConfigDict]]:
    """The (name, config) stages of an arm, in order: base (English LM), [stage0], stage1, stage2."""
    root = str(p["root"])
    tok = p["tokenizer"] if arm.expanded else p["tokenizer_en"]
    text = lambda name, t, files: text_stage(c, t, files, seed, name, root)  # noqa: E731
    stages = [("base", text("base", p["tokenizer_en"], ("text_en.txt",)))]
    if arm.stage0:
        stages.append(("stage0", text("stage0", p["tokenizer"], tuple(f"text_{la}.txt" for la in world.LANGS))))
    stages.append(("stage1", stage1_config(c, tok, seed, root, arm.stage1_mvqa)))
    files = list(arm.stage2_files)
    s2 = stage2_config(c, tok, seed, root, arm.consistency_weight)
    s2.data.update(files=tuple(f"{f}.jsonl" for f in files for _ in file_langs(f)),
                   langs=tuple(la for f in files for la in file_langs(f)))
    if arm.stage2_tasks:
        s2.data.task_mix.update(files=("parallel.jsonl",), tasks=arm.stage2_tasks,
                                non_english_ratio=arm.non_english_ratio)
    stages.append(("stage2", s2))
    return stages


def stage1_config(c: ml_collections.ConfigDict, tok: Path, seed: int, root: str, mvqa: bool) -> ml_collections.ConfigDict:
    """Stage 1 (alignment on the captions; CLIP + projector trained: a random CLIP's stand-in pretraining), with
    the MVQA task mix over captions_parallel when `mvqa`."""
    s1 = stage_base(1, c, tok, seed)
    s1.train.trainable = "vision_tower,projector"
    s1.data.update(root=root, files=tuple(f"captions_{la}.jsonl" for la in world.LANGS), langs=world.LANGS,
                   template="plain", max_len=c.max_len.stage1)
    if mvqa:
        s1.data.task_mix.update(files=("captions_parallel.jsonl",), tasks="mvqa", non_english_ratio=1.0)
    s1.train.update(batch_size=c.batch.stage1, num_steps=c.steps.stage1)
    s1.optim.update(lr=c.lr.stage1, warmup_ratio=0.03)
    return s1


def stage2_config(c: ml_collections.ConfigDict, tok: Path, seed: int, root: str,
                  consistency_weight: float) -> ml_collections.ConfigDict:
    """Stage 2 (projector + LLM on instruction data; the caller sets data.files) with the held-out
    conversations as eval data (the modality gap at the last step)."""
    s2 = stage_base(2, c, tok, seed)
    s2.data.update(root=root, template="vicuna_v1", max_len=c.max_len.stage2)
    s2.train.update(batch_size=c.batch.stage2, num_steps=c.steps.stage2, consistency_weight=consistency_weight)
    s2.optim.update(lr=c.lr.stage2, warmup_ratio=0.03)
    s2.eval_data.update(root=root, files=("eval_conversations.jsonl",) * 3, langs=world.LANGS, template="vicuna_v1",
                        max_len=c.max_len.stage2, shuffle=False)
    s2.eval.update(every_steps=c.steps.stage2, num_batches=c.eval.gap_batches, batch_size=c.batch.stage2)
    return s2


def file_langs(name: str) -> tuple[str, ...]:
    """Languages of a world file: 'qa_ko' -> ('ko',), parallel files -> all."""
    suffix = name.rsplit("_", 1)[-1]
    return (suffix,) if suffix in world.LANGS else world.LANGS


def text_stage(c: ml_collections.ConfigDict, tokenizer: Path, files: tuple[str, ...], seed: int, name: str,
                root: str) -> ml_collections.ConfigDict:
    """A stage-0 (causal LM on packed text) config: `base` from random init, `stage0` from the base model."""
    s = stage_base(0, c, tokenizer, seed)
    s.model.kind = "llama"
    s.init.source = "random" if name == "base" else "previous"
    s.data.update(format="text", files=files, pack=True, max_len=c.max_len.text, root=root)
    s.train.update(batch_size=c.batch.text, num_steps=c.steps[name])
    s.optim.update(lr=c.lr.text, warmup_ratio=0.05)
    return s


def stage_key(config: ml_collections.ConfigDict, parent: str) -> str:
    """Content key of a stage: its config and the key of the stage it starts from."""
    blob = json.dumps({"config": config.to_dict(), "parent": parent}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def run_chain(stages: list[tuple[str, ml_collections.ConfigDict]], out: Path, seed: int) -> list[dict]:
    """Train each stage unless a run with the same key finished (DIR/stages/seed<s>/<name>-<key>/done.json)."""
    from xllava_jax.train.loop import run_stage
    results, parent, previous = [], "", ""
    for name, config in stages:
        key = stage_key(config, parent)
        workdir = out / "stages" / f"seed{seed}" / f"{name}-{key}"
        done = workdir / DONE
        if done.exists():
            result = json.loads(done.read_text())
        else:
            start = time.perf_counter()
            r = run_stage(config, workdir, previous)
            result = {"name": name, "key": key, "workdir": str(workdir), "checkpoint": r["checkpoint"],
                      "step": r["step"], "seconds": time.perf_counter() - start,
                      "row_tokens": int(r["step"]) * config.train.batch_size * config.data.max_len,
                      "metrics": {k: float(v) for k, v in r["metrics"].items()}}
            if r["step"] < r["total_steps"]:  # stopped early (SIGTERM): resumable, not done
                raise RuntimeError(f"{workdir}: stopped at step {r['step']} of {r['total_steps']}; run again to resume")
            done.write_text(json.dumps(result, indent=2))
            log.info("%s seed %d: %s in %.0f s", name, seed, workdir.name, result["seconds"])
        results.append(result)
        parent, previous = key, result["checkpoint"]
    return results


def tokens_per_char(tokenizer_path: Path, lines: list[str]) -> float:
    """Tokens per character of `lines` under a tokenizer."""
    from xllava_jax.tokenizer.spm import load_tokenizer
    tok = load_tokenizer(tokenizer_path)
    return sum(len(tok.encode(x)) for x in lines) / max(sum(len(x) for x in lines), 1)


def metric_groups(record: dict) -> list[str]:
    """The accuracy metrics a question counts in: acc_<lang> and acc_<lang>_<kind>."""
    return [f"acc_{record['lang']}", f"acc_{record['lang']}_{record['kind']}"]


def evaluate_arm(checkpoint: str, tokenizer: Path, p: dict, c: ml_collections.ConfigDict, out_dir: Path,
                 groups=metric_groups, max_new_tokens: int | None = None) -> dict:
    """Held-out accuracy {acc_non_en, and per question the metrics `groups(record)` names (default: acc_<lang>,
    acc_<lang>_<kind>)} (eval.runner.evaluate, GQA exact match, greedy, `max_new_tokens` or c.eval's)."""
    from xllava_jax.jsonl import read_jsonl
    from xllava_jax.eval.metrics import gqa_match
    from xllava_jax.eval.runner import ANSWERS_FILE, evaluate
    from xllava_jax.infer.generate import GenerationConfig
    from xllava_jax.infer.loading import load_model
    from xllava_jax.tokenizer.spm import load_tokenizer
    scores_file = out_dir / "scores.json"
    records = list(read_jsonl(p["questions"]))
    if not scores_file.exists():
        model, params = load_model(checkpoint)
        evaluate(model, params, load_tokenizer(tokenizer), "gqa", records, image_root=str(p["root"]),
                 template="vicuna_v1", config=GenerationConfig(max_new_tokens=max_new_tokens or c.eval.max_new_tokens),
                 out_dir=out_dir, instruction="")
    answers = {r["question_id"]: r["text"] for r in read_jsonl(out_dir / ANSWERS_FILE)}
    hits: dict[str, list[float]] = collections.defaultdict(list)
    for r in records:
        ok = float(gqa_match(answers[r["question_id"]], r["answer"]))
        for name in groups(r):
            hits[name].append(ok)
    out = {k: float(np.mean(v)) for k, v in hits.items()}
    out["acc_non_en"] = float(np.mean([out[f"acc_{la}"] for la in world.NON_EN]))
    return out


def features(checkpoint: str, tokenizer: Path, p: dict, points: int, out_file: Path) -> dict[str, np.ndarray]:
    """Figure 5's points: per held-out sample the mean projected image features and, per language, the mean
    input embedding of its question text (the LLM's multilingual text features); cached in `out_file`."""
    if out_file.exists():
        return dict(np.load(out_file))
    from xllava_jax.jsonl import read_jsonl
    from xllava_jax.infer.loading import load_model
    from xllava_jax.infer.prompts import load_image
    from xllava_jax.tokenizer.spm import load_tokenizer
    model, params = load_model(checkpoint)
    tok = load_tokenizer(tokenizer)
    records = list(read_jsonl(p["questions"]))
    images = sorted({r["image"] for r in records})[:points]
    pixels = np.stack([load_image(i, str(p["root"]), model.cfg.vision.image_size) for i in images])
    image = np.asarray(model.apply({"params": params}, pixels, method=type(model).image_features)).mean(axis=1)
    out = {"image": image}
    for la in world.LANGS:
        texts = [r["text"] for r in records if r["lang"] == la][:points]
        rows = []
        for t in texts:
            ids = np.asarray([tok.encode(t)], np.int32)
            rows.append(np.asarray(model.apply({"params": params}, ids, method=type(model).embed))[0].mean(axis=0))
        out[f"text_{la}"] = np.stack(rows)
    np.savez(out_file, **out)
    return out


def chain_metrics(chain: list[dict], tok: Path, p: dict) -> dict:
    """Metrics of a trained chain besides accuracy: Korean tokens per character, stage-2 characters per second
    (row tokens per second / tokens per character of the held-out en+ko+zh text), the modality gap, seconds."""
    from xllava_jax.tokenizer.report import read_lines
    last = chain[-1]
    m2 = last["metrics"]
    out = {"tokens_per_char_ko": tokens_per_char(tok, read_lines(p["heldout_text_ko"]))}
    reference = [x for la in world.LANGS for x in read_lines(p[f"heldout_text_{la}"])]
    row_tokens_per_s = last["row_tokens"] / last["step"] / m2["step_time_s"]
    out["train_chars_per_s"] = row_tokens_per_s / tokens_per_char(tok, reference)
    for k in ("modality_gap", "modality_cos"):
        if f"eval_{k}" in m2:
            out[k] = m2[f"eval_{k}"]
    out["train_seconds"] = sum(r["seconds"] for r in chain)  # every stage of the arm, shared ones included
    return out


def bookkeeping(chain: list[dict]) -> dict:
    """Per stage of a chain: key, steps, row tokens, seconds."""
    return {"stages": {r["name"]: {"key": r["key"], "steps": r["step"], "row_tokens": r["row_tokens"],
                                   "seconds": r["seconds"]} for r in chain}}


def arm_metrics(arm: Arm, c: ml_collections.ConfigDict, p: dict, out: Path, seed: int,
                want_features: bool = False) -> dict:
    """Train (or reuse) the arm's stages for one seed, evaluate, and return its metrics and bookkeeping."""
    chain = run_chain(stage_configs(arm, c, p, seed), out, seed)
    last = chain[-1]
    tok = p["tokenizer"] if arm.expanded else p["tokenizer_en"]
    metrics = evaluate_arm(last["checkpoint"], tok, p, c, Path(last["workdir"]) / "eval")
    metrics.update(chain_metrics(chain, tok, p))
    book = bookkeeping(chain)
    if want_features:
        book["features"] = str(Path(last["workdir"]) / "eval" / "features.npz")
        features(last["checkpoint"], tok, p, c.eval.feature_points, Path(book["features"]))
    return {"metrics": metrics, **book}


def run_suite(c: ml_collections.ConfigDict, out: str | Path) -> dict:
    """Every arm of the suite for seeds 0..c.seeds-1: {"arms": {arm: {"seeds", "per_seed": [...]}}, "baselines"}."""
    from xllava_jax.experiments.world import prepare
    out = Path(out)
    p = prepare(out / "world", c.world)
    arms = suite_arms(c)
    result = {"arms": {}, "baselines": world.text_only_baseline(p), "seconds": {}}
    for seed in range(c.seeds):  # seed-major: every arm has a seed before any has two
        for arm in arms:
            start = time.perf_counter()
            r = arm_metrics(arm, c, p, out, seed, want_features=c.suite == "lrm_fig5")
            entry = result["arms"].setdefault(arm.name, {"seeds": [], "per_seed": [], "arm": dataclasses_dict(arm)})
            entry["seeds"].append(seed)
            entry["per_seed"].append(r)
            result["seconds"][f"{arm.name} / seed {seed}"] = time.perf_counter() - start
            log.info("%s / %s / seed %d: %s", c.suite, arm.name, seed,
                     {k: round(v, 3) for k, v in r["metrics"].items() if "_" not in k[4:] or k == "acc_non_en"})
    return result


def dataclasses_dict(arm: Arm) -> dict:
    """The arm's recipe as a dict."""
    import dataclasses
    return dataclasses.asdict(arm)
