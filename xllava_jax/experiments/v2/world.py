"""Study v2's world (docs/experiments/v2/DESIGN.md): v1's scenes and premises with room for each mechanism.
Korean/Chinese instruction data never ask the position question (its only routes: stage-0 text, mvif, the
parallel data); they ask the fruit question for red and green scenes only (the blue/yellow facts are in
stage-0 text alone); a gate file holds four times more Korean records of every kind; 12 balanced triples occur
in English data only (the cross-lingual composition test); evaluation covers all 48 triples with fresh scenes."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import ml_collections

from xllava_jax.data import synthetic
from xllava_jax.data.synthetic import COLORS, LANGS, POSITIONS, SHAPES, Scene, caption
from xllava_jax.experiments import world as v1
from xllava_jax.experiments.world import KINDS, KNOWLEDGE_KIND, NON_EN, VISUAL_KINDS

TRAINED_FRUIT_COLORS = ("red", "green")  # non-English fruit questions are asked (trained) for these colours
NON_EN_KINDS = ("color", "shape", KNOWLEDGE_KIND)  # what qa_ko / qa_zh ask: never the position
FILES = ("captions_en", "captions_ko", "captions_zh", "captions_parallel", "qa_en", "qa_ko", "qa_zh", "qa_gate_ko",
         "mvif", "parallel")
INSTRUCTION_FILES = ("qa_en", "qa_ko", "qa_zh", "qa_gate_ko", "mvif", "parallel")


def default_world() -> ml_collections.ConfigDict:
    """Sizes of the v2 world (configs/experiments/v2.py may override them)."""
    w = ml_collections.ConfigDict()
    w.image_size = 48  # drawn size = the ViT's input
    w.scale = (0.20, 0.25)  # shape radius as a fraction of the side (v1: 0.16-0.22 of 32 px)
    w.jitter = 0.04  # centre offset, fraction of the side
    w.en_qa = 600  # English instruction records (4 turns: colour, shape, position, fruit), all 48 triples
    w.scarce_qa = 80  # Korean and Chinese records each: colour, shape, fruit (red/green only); no position
    w.gate_factor = 5  # the gate arm's Korean records = gate_factor x scarce_qa (qa_ko + qa_gate_ko)
    w.mvif = 200  # X-LLaVA mvif-like records, parallel en/ko/zh, visual kinds (the position included)
    w.parallel = 300  # LRM translated records, parallel en/ko/zh, visual kinds
    w.en_captions = 600  # English caption records (stage 1)
    w.scarce_captions = 80  # Korean and Chinese caption records each
    w.text_en = 1600  # stage-0 text lines in English (the base model's corpus too)
    w.text_non_en = 1200  # stage-0 text lines in Korean and in Chinese each
    w.eval_per_triple = 2  # fresh evaluation scenes per (colour, shape, position) triple: 96 scenes
    w.base_vocab = 600  # English-only SentencePiece vocabulary (Korean then falls back to bytes)
    w.new_pieces = 300  # Korean + Chinese pieces added by the expansion
    w.seed = 0  # the world (and the frozen ViT) are the same for every training seed
    return w


def composition_triples() -> list[tuple[str, str, str]]:
    """The 12 balanced cross-lingual hold-out triples: every (colour, shape) pair once, position index =
    (colour index + shape index) mod 4 (each colour 3x, shape 4x, position 3x, (shape, position) pair once)."""
    colors, shapes, positions = list(COLORS), list(SHAPES), list(POSITIONS)
    return [(c, s, positions[(i + j) % len(positions)]) for i, c in enumerate(colors) for j, s in enumerate(shapes)]


def paths(root: str | Path) -> dict[str, Path]:
    """The files of a v2 world under `root` (v1's names plus the gate file and the frozen ViT)."""
    p = v1.paths(root)
    p["qa_gate_ko"] = p["root"] / "qa_gate_ko.jsonl"
    p["vit"] = p["root"] / "vit"
    return p


def non_en_turns(scene: Scene, i: int, langs: tuple[str, ...], kinds: tuple[str, ...]) -> list[dict]:
    """Turns of a non-English record: `kinds` rotated by `i`, the fruit question only for trained colours."""
    asked = [k for k in v1.rotate(kinds, i) if k != KNOWLEDGE_KIND or scene.color in TRAINED_FRUIT_COLORS]
    return v1.qa_turns(scene, asked, langs)


def eval_question(i: int, scene: Scene, image: str, kind: str, lang: str, comp: set) -> dict:
    """One evaluation question with its groups: the composition flag and the fruit group (trained / text)."""
    return {"question_id": f"{i}_{kind}_{lang}", "image": image, "text": v1.question(kind, lang), "lang": lang,
            "kind": kind, "answer": v1.world_answer(scene, kind, lang),
            "comp": (scene.color, scene.shape, scene.position) in comp,
            "fruit_group": "trained" if scene.color in TRAINED_FRUIT_COLORS else "text"}


def write_world(root: str | Path, w: ml_collections.ConfigDict | None = None) -> dict[str, Path]:
    """Every data file of the v2 world under `root` (skipped when root/questions.jsonl exists)."""
    w = w or default_world()
    p = paths(root)
    root = p["root"]
    record = root / "world.json"
    if p["questions"].exists():
        if not record.exists() or json.loads(record.read_text()) != json.loads(json.dumps(w.to_dict())):
            raise ValueError(f"{root} holds a world written with other settings ({record}); use a new --out DIR")
        return p
    (root / "images").mkdir(parents=True, exist_ok=True)
    every = sorted(itertools.product(COLORS, SHAPES, POSITIONS))
    comp = set(composition_triples())
    seen_non_en = [t for t in every if t not in comp]
    seed = iter(range(w.seed * 100, w.seed * 100 + 100))
    draw = lambda n, triples: v1.scenes(n, next(seed), triples, tuple(w.scale), w.jitter)  # noqa: E731
    cap = lambda langs: lambda i, s: [{"from": "human", "value": {la: "<image>\n" for la in langs}},  # noqa: E731
                                      {"from": "gpt", "value": {la: caption(s, la) for la in langs}}]
    qa = lambda langs, kinds: lambda i, s: v1.qa_turns(s, v1.rotate(kinds, i), langs)  # noqa: E731
    non_en = lambda langs, kinds: lambda i, s: non_en_turns(s, i, langs, kinds)  # noqa: E731
    gate_records = (w.gate_factor - 1) * w.scarce_qa
    groups = {"captions_en": (w.en_captions, every, cap(("en",))),
              "captions_ko": (w.scarce_captions, seen_non_en, cap(("ko",))),
              "captions_zh": (w.scarce_captions, seen_non_en, cap(("zh",))),
              "captions_parallel": (w.parallel, seen_non_en, cap(LANGS)),
              "qa_en": (w.en_qa, every, qa(("en",), KINDS)),
              "qa_ko": (w.scarce_qa, seen_non_en, non_en(("ko",), NON_EN_KINDS)),
              "qa_zh": (w.scarce_qa, seen_non_en, non_en(("zh",), NON_EN_KINDS)),
              "qa_gate_ko": (gate_records, seen_non_en, non_en(("ko",), KINDS)),
              "mvif": (w.mvif, seen_non_en, qa(LANGS, VISUAL_KINDS)),
              "parallel": (w.parallel, seen_non_en, qa(LANGS, VISUAL_KINDS))}
    for name, (count, triples, make) in groups.items():
        sc = draw(count, triples)
        synthetic.write_jsonl(p[name], v1.records(name, sc, v1.draw_all(root, name, sc, w.image_size), make))
    evals = fresh_scenes(w.eval_per_triple, every, next(seed), training_pixels(root), w)
    names = v1.draw_all(root, "eval", evals, w.image_size)
    questions = [eval_question(i, s, n, k, la, comp) for i, (s, n) in enumerate(zip(evals, names))
                 for k in KINDS for la in LANGS]
    synthetic.write_jsonl(p["questions"], questions)
    synthetic.write_jsonl(p["eval_conversations"], v1.records("eval", evals, names, qa(LANGS, VISUAL_KINDS)))
    for la in LANGS:
        text_scenes = draw(w.text_en if la == "en" else w.text_non_en, every if la == "en" else seen_non_en)
        synthetic.write_lines(p[f"text_{la}"], v1.text_corpus(text_scenes, la, kinds=KINDS))
        synthetic.write_lines(p[f"heldout_text_{la}"], [caption(s, la) for s in evals])
    record.write_text(json.dumps(w.to_dict()))
    return p


def training_pixels(root: Path) -> set[bytes]:
    """The pixel bytes of every image drawn so far under root/images (the training images)."""
    from PIL import Image
    return {Image.open(f).convert("RGB").tobytes() for f in (root / "images").glob("*.png")}


def fresh_scenes(per_triple: int, triples: list[tuple[str, str, str]], seed: int, seen: set[bytes],
                 w: ml_collections.ConfigDict, tries: int = 1000) -> list[Scene]:
    """`per_triple` jittered scenes of each triple (in turn) whose pixels equal no image in `seen` nor each other
    (small images quantise the jitter, so a random scene can repeat a training image exactly)."""
    out, seen = [], set(seen)
    for k in range(per_triple * len(triples)):
        for attempt in range(tries):
            scene = v1.scenes(1, seed * 1_000_003 + k * tries + attempt, [triples[k % len(triples)]],
                              tuple(w.scale), w.jitter)[0]
            pixels = synthetic.draw(scene, w.image_size).tobytes()
            if pixels not in seen:
                seen.add(pixels)
                out.append(scene)
                break
        else:
            raise ValueError(f"no fresh scene of {triples[k % len(triples)]} in {tries} tries: widen world.jitter/scale")
    return out


def training_files(p: dict[str, Path]) -> list[Path]:
    """Every file a v2 training stage may read."""
    return [p[k] for k in FILES] + [p[f"text_{la}"] for la in LANGS]


def metric_groups(record: dict) -> list[str]:
    """The accuracy metrics an evaluation question counts in: v1's, the composition subset and the fruit group."""
    lang, kind = record["lang"], record["kind"]
    out = [f"acc_{lang}", f"acc_{lang}_{kind}"]
    if record.get("comp"):
        out.append(f"acc_{lang}_comp")
    if kind == KNOWLEDGE_KIND:
        out.append(f"acc_{lang}_fruit_{record['fruit_group']}")
    return out


def prepare(root: str | Path, w: ml_collections.ConfigDict | None = None) -> dict[str, Path]:
    """The v2 world's files and tokenizers (v1's make_tokenizers on this world); the ViT is vision.py's."""
    w = w or default_world()
    return v1.make_tokenizers(write_world(root, w), w)


__all__ = ["NON_EN", "composition_triples", "default_world", "metric_groups", "paths", "prepare", "write_world"]
