"""The experiments' synthetic world (docs/experiments/DESIGN.md): the demo's scenes (data/synthetic.py) with
the papers' premises built in. English is rich and Korean/Chinese scarce in the instruction data; a knowledge
question ("which fruit has this colour?") needs a colour->fruit fact that is stated in the text pretraining
(en, ko, zh) and asked in English instruction data only; the base tokenizer is trained on English alone
(Korean falls back to bytes); held-out scenes use (colour, shape, position) triples that no training file holds.
"""

from __future__ import annotations

import collections
import itertools
from pathlib import Path

import ml_collections
import numpy as np

from xllava_jax.data import synthetic
from xllava_jax.data.synthetic import COLORS, LANGS, POSITIONS, QUESTIONS, SHAPES, Scene, answer, caption

NON_EN = ("ko", "zh")
VISUAL_KINDS = tuple(QUESTIONS)  # color, shape, position: answerable from the image alone
KNOWLEDGE_KIND = "fruit"  # needs the colour (image) and the colour->fruit fact (text pretraining)
KINDS = (*VISUAL_KINDS, KNOWLEDGE_KIND)
FRUITS = {
    "red": {"en": "apple", "ko": "사과", "zh": "苹果"},
    "green": {"en": "lime", "ko": "라임", "zh": "青柠"},
    "blue": {"en": "blueberry", "ko": "블루베리", "zh": "蓝莓"},
    "yellow": {"en": "banana", "ko": "바나나", "zh": "香蕉"},
}
FRUIT_QUESTION = {"en": "Which fruit has this color?", "ko": "어떤 과일이 이 색입니까?", "zh": "哪种水果是这个颜色？"}
FACTS = (  # knowledge sentences of the text pretraining; {fruit}, {color} in the sentence's language
    {"en": "The {fruit} is {color}.", "ko": "{fruit}는 {color}입니다.", "zh": "{fruit}是{color}的。"},
    {"en": "A {color} fruit is the {fruit}.", "ko": "{color} 과일은 {fruit}입니다.", "zh": "{color}的水果是{fruit}。"},
    {"en": "Something {color} looks like a {fruit}.", "ko": "{color} 물건은 {fruit}처럼 보입니다.",
     "zh": "{color}的东西看起来像{fruit}。"},
)


def question(kind: str, lang: str) -> str:
    """The question text of a kind in a language."""
    return FRUIT_QUESTION[lang] if kind == KNOWLEDGE_KIND else QUESTIONS[kind][lang]


def world_answer(scene: Scene, kind: str, lang: str) -> str:
    """The gold answer of a question kind (the knowledge kind included)."""
    return FRUITS[scene.color][lang] if kind == KNOWLEDGE_KIND else answer(scene, kind, lang)


def held_out_triples(count: int, seed: int = 1234) -> set[tuple[str, str, str]]:
    """`count` (colour, shape, position) triples kept out of every training file (fixed, seed-independent)."""
    triples = list(itertools.product(COLORS, SHAPES, POSITIONS))
    rng = np.random.default_rng(seed)
    return {triples[i] for i in rng.choice(len(triples), count, replace=False)}


def scenes(count: int, seed: int, triples: list[tuple[str, str, str]], scale: tuple[float, float] = (0.16, 0.22),
           jitter: float = 0.05, cycle: bool = False) -> list[Scene]:
    """`count` jittered scenes drawn from `triples` (at random, or in turn when `cycle`), deterministic for `seed`;
    shape radius uniform in `scale` (fraction of the side), centre offset uniform in +-`jitter`."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        c, s, p = triples[i % len(triples)] if cycle else triples[rng.integers(len(triples))]
        out.append(Scene(c, s, p, float(rng.uniform(*scale)),
                         (float(rng.uniform(-jitter, jitter)), float(rng.uniform(-jitter, jitter)))))
    return out


def qa_turns(scene: Scene, kinds: list[str], langs: tuple[str, ...]) -> list[dict]:
    """Parallel {lang: text} conversation turns asking `kinds` about `scene`."""
    turns = []
    for i, kind in enumerate(kinds):
        turns.append({"from": "human", "value": {la: ("<image>\n" if i == 0 else "") + question(kind, la) for la in langs}})
        turns.append({"from": "gpt", "value": {la: world_answer(scene, kind, la) for la in langs}})
    return turns


def rotate(kinds: tuple[str, ...], i: int) -> list[str]:
    """`kinds` rotated by `i` (every kind asked first equally often)."""
    return [kinds[(i + j) % len(kinds)] for j in range(len(kinds))]


def text_corpus(scene_list: list[Scene], lang: str, facts_per_scene: bool = True,
                kinds: tuple[str, ...] = VISUAL_KINDS) -> list[str]:
    """Stage-0 text in one language: captions with a question (of `kinds`, in turn) and its answer, and
    colour->fruit facts."""
    lines = []
    for i, s in enumerate(scene_list):
        kind = kinds[i % len(kinds)]
        line = f"{caption(s, lang)} {question(kind, lang)} {world_answer(s, kind, lang)}"
        if facts_per_scene:
            fact = FACTS[i % len(FACTS)][lang]
            line += " " + fact.format(fruit=FRUITS[s.color][lang], color=COLORS[s.color][1][lang])
        lines.append(line)
    return lines


def default_world() -> ml_collections.ConfigDict:
    """Sizes of the world (the suite configs override them)."""
    w = ml_collections.ConfigDict()
    w.image_size = 32  # drawn size (the model reads it at model.image_size)
    w.held_out_triples = 8  # (colour, shape, position) triples of the 48 kept for evaluation only
    w.en_qa = 600  # English instruction records (4 turns: colour, shape, position, fruit)
    w.scarce_qa = 40  # Korean and Chinese instruction records each (visual kinds only)
    w.mvif = 200  # X-LLaVA mvif-like records, parallel en/ko/zh (visual kinds only)
    w.parallel = 300  # LRM-LLaVA translated records, parallel en/ko/zh (visual kinds only) -> task_mix.files
    w.en_captions = 600  # English caption records (stage 1)
    w.scarce_captions = 40  # Korean and Chinese caption records each (stage 1)
    w.text_en = 1200  # stage-0 text lines in English (the base model's corpus too)
    w.text_non_en = 800  # stage-0 text lines in Korean and in Chinese each
    w.eval_scenes = 40  # held-out scenes; each asked every kind in every language
    w.base_vocab = 600  # English-only SentencePiece vocabulary (Korean then falls back to bytes)
    w.new_pieces = 300  # Korean + Chinese pieces added by the expansion
    w.seed = 0  # the world is the same for every training seed
    return w


def paths(root: str | Path) -> dict[str, Path]:
    """The files of a world under `root`."""
    root = Path(root)
    names = ("captions_en", "captions_ko", "captions_zh", "captions_parallel", "qa_en", "qa_ko", "qa_zh", "mvif",
             "parallel", "questions", "eval_conversations")
    out = {"root": root, **{n: root / f"{n}.jsonl" for n in names}}
    for la in LANGS:
        out[f"text_{la}"] = root / f"text_{la}.txt"
        out[f"heldout_text_{la}"] = root / f"heldout_text_{la}.txt"
    out["tokenizer_en"] = root / "tokenizer_en" / "tokenizer.model"
    out["tokenizer"] = root / "tokenizer"
    out["tokenizer_report"] = root / "tokenizer_report.json"
    return out


def records(prefix: str, scene_list: list[Scene], names: list[str], make) -> list[dict]:
    """Conversation records {id, image, conversations} from (scene, image name) with `make(i, scene)` turns."""
    return [{"id": f"{prefix}{i}", "image": n, "conversations": make(i, s)} for i, (s, n) in enumerate(zip(scene_list, names))]


def draw_all(root: Path, prefix: str, scene_list: list[Scene], size: int) -> list[str]:
    """Draw scenes to root/images/<prefix>_<i>.png; returns the relative names."""
    names = []
    for i, s in enumerate(scene_list):
        name = f"images/{prefix}_{i:05d}.png"
        synthetic.draw(s, size).save(root / name)
        names.append(name)
    return names


def write_world(root: str | Path, w: ml_collections.ConfigDict | None = None) -> dict[str, Path]:
    """Every data file of the world under `root` (skipped when root/questions.jsonl exists)."""
    w = w or default_world()
    p = paths(root)
    root = p["root"]
    if p["questions"].exists():
        return p
    (root / "images").mkdir(parents=True, exist_ok=True)
    held = held_out_triples(w.held_out_triples)
    train_triples = sorted(set(itertools.product(COLORS, SHAPES, POSITIONS)) - held)
    seed = iter(range(w.seed * 100, w.seed * 100 + 100))
    one = lambda n: scenes(n, next(seed), train_triples)  # noqa: E731
    cap = lambda langs: lambda i, s: [{"from": "human", "value": {la: "<image>\n" for la in langs}},  # noqa: E731
                                      {"from": "gpt", "value": {la: caption(s, la) for la in langs}}]
    qa = lambda langs, kinds: lambda i, s: qa_turns(s, rotate(kinds, i), langs)  # noqa: E731
    groups = {"captions_en": (w.en_captions, cap(("en",))), "captions_ko": (w.scarce_captions, cap(("ko",))),
              "captions_zh": (w.scarce_captions, cap(("zh",))), "captions_parallel": (w.parallel, cap(LANGS)),
              "qa_en": (w.en_qa, qa(("en",), KINDS)), "qa_ko": (w.scarce_qa, qa(("ko",), VISUAL_KINDS)),
              "qa_zh": (w.scarce_qa, qa(("zh",), VISUAL_KINDS)), "mvif": (w.mvif, qa(LANGS, VISUAL_KINDS)),
              "parallel": (w.parallel, qa(LANGS, VISUAL_KINDS))}
    for name, (count, make) in groups.items():
        sc = one(count)
        synthetic.write_jsonl(p[name], records(name, sc, draw_all(root, name, sc, w.image_size), make))
    evals = scenes(w.eval_scenes, next(seed), sorted(held))
    names = draw_all(root, "eval", evals, w.image_size)
    questions = [{"question_id": f"{i}_{k}_{la}", "image": n, "text": question(k, la), "lang": la, "kind": k,
                  "answer": world_answer(s, k, la)}
                 for i, (s, n) in enumerate(zip(evals, names)) for k in KINDS for la in LANGS]
    synthetic.write_jsonl(p["questions"], questions)
    synthetic.write_jsonl(p["eval_conversations"], records("eval", evals, names, qa(LANGS, VISUAL_KINDS)))
    text_scenes = {la: one(w.text_en if la == "en" else w.text_non_en) for la in LANGS}
    for la in LANGS:
        synthetic.write_lines(p[f"text_{la}"], text_corpus(text_scenes[la], la))
        synthetic.write_lines(p[f"heldout_text_{la}"], [caption(s, la) for s in evals])
    return p


def training_files(p: dict[str, Path]) -> list[Path]:
    """Every file a training stage may read (the held-out check searches these)."""
    return [p[k] for k in ("captions_en", "captions_ko", "captions_zh", "captions_parallel", "qa_en", "qa_ko",
                           "qa_zh", "mvif", "parallel", *(f"text_{la}" for la in LANGS))]


INSTRUCTION_FILES = ("qa_en", "qa_ko", "qa_zh", "mvif", "parallel")


def text_only_baseline(p: dict[str, Path], files: tuple[str, ...] = INSTRUCTION_FILES) -> dict:
    """Accuracy of answering every held-out question with the most common instruction-data answer of its (kind,
    language) (no guess, so wrong, where that pair never occurs in training: `text_only`), with the held-out
    set's own most common answer of its (kind, language) (an answer-prior oracle that sees the evaluation labels:
    `heldout_majority`), and of uniform guessing (`chance`)."""
    from xllava_jax.jsonl import read_jsonl
    counts: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    for name in files:
        for r in read_jsonl(p[name]):
            conv = r["conversations"]
            for q, a in zip(conv[0::2], conv[1::2]):
                for la, text in q["value"].items():
                    kind = next(k for k in KINDS if question(k, la) in text)
                    counts[(kind, la)][a["value"][la]] += 1
    sizes = {"color": len(COLORS), "shape": len(SHAPES), "position": len(POSITIONS), KNOWLEDGE_KIND: len(FRUITS)}
    questions = list(read_jsonl(p["questions"]))
    heldout: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    for q in questions:
        heldout[(q["kind"], q["lang"])][q["answer"]] += 1
    hits: dict[str, list[float]] = collections.defaultdict(list)
    oracle: dict[str, list[float]] = collections.defaultdict(list)
    chance: dict[str, list[float]] = collections.defaultdict(list)
    for q in questions:
        c = counts.get((q["kind"], q["lang"]))
        guess = c.most_common(1)[0][0] if c else None
        hits[q["lang"]].append(float(guess == q["answer"]))
        oracle[q["lang"]].append(float(heldout[(q["kind"], q["lang"])].most_common(1)[0][0] == q["answer"]))
        chance[q["lang"]].append(1.0 / sizes[q["kind"]])
    mean = lambda v: float(sum(v) / len(v))  # noqa: E731
    out = {name: {f"acc_{la}": mean(v) for la, v in d.items()}
           for name, d in (("text_only", hits), ("heldout_majority", oracle), ("chance", chance))}
    for d in out.values():
        d["acc_non_en"] = mean([d[f"acc_{la}"] for la in NON_EN])
    return out


def instruction_phrases(lang: str) -> list[str]:
    """The LRM task-instruction phrasings and language names in `lang`: the expansion corpus holds them too
    (a real expanded vocabulary covers general Korean and Chinese, not only this world's sentences)."""
    from xllava_jax.data.multilingual.phrasings import (BVQA_INSTRUCTION, EP_VQA_ANSWER, EP_VQA_INSTRUCTION,
                                                        LANGUAGE_NAMES)
    return [t[lang] for t in (EP_VQA_INSTRUCTION, EP_VQA_ANSWER, BVQA_INSTRUCTION) if lang in t] * 20 + \
        [" ".join(LANGUAGE_NAMES.get(lang, {}).values())] * 20


def prepare(root: str | Path, w: ml_collections.ConfigDict | None = None) -> dict[str, Path]:
    """The world's files, the English-only base tokenizer, its Korean/Chinese expansion and the tokenizer
    report (held-out text); what exists is reused. Same steps as the demo's (demo.prepare), on this world."""
    w = w or default_world()
    return make_tokenizers(write_world(root, w), w)


def make_tokenizers(p: dict[str, Path], w: ml_collections.ConfigDict) -> dict[str, Path]:
    """The English-only base tokenizer (text_en), its Korean/Chinese expansion (text_ko, text_zh + the LRM
    phrasings) and the tokenizer report on the held-out text, under the world's paths `p`; what exists is reused."""
    from xllava_jax.data.templates import VICUNA_SYSTEM
    from xllava_jax.demo import train_tokenizer
    from xllava_jax.tokenizer.expand import expand_tokenizer
    from xllava_jax.tokenizer.report import read_lines, save_report, tokenizer_report
    if not p["tokenizer_en"].exists():
        template_line = f"{VICUNA_SYSTEM} USER: ASSISTANT:"
        train_tokenizer(read_lines(p["text_en"]) + [template_line] * 50, p["tokenizer_en"], w.base_vocab)
    if not (p["tokenizer"] / "tokenizer.model").exists():
        corpus = synthetic.write_lines(p["root"] / "text_ko_zh.txt", [line for la in NON_EN for line in (
            read_lines(p[f"text_{la}"]) + instruction_phrases(la))])
        expand_tokenizer(p["tokenizer_en"], p["tokenizer"], train_corpus=corpus, new_pieces=w.new_pieces, num_threads=1)
    if not p["tokenizer_report"].exists():
        save_report(tokenizer_report(p["tokenizer_en"], p["tokenizer"] / "tokenizer.model",
                                     {la: p[f"heldout_text_{la}"] for la in LANGS}), p["tokenizer_report"])
    return p
