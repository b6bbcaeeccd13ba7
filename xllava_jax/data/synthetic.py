"""The demo's synthetic multilingual dataset: PIL-drawn scenes of one coloured shape at a
position, with parallel English/Korean/Chinese captions, questions and answers, stage-0 text
corpora, held-out questions, and held-out text for the tokenizer report. Nothing is downloaded."""

from __future__ import annotations

import collections
import dataclasses
import json
import string
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

LANGS = ("en", "ko", "zh")
COLORS = {
    "red": ((220, 40, 40), {"en": "red", "ko": "빨간색", "zh": "红色"}),
    "green": ((40, 170, 60), {"en": "green", "ko": "초록색", "zh": "绿色"}),
    "blue": ((40, 70, 220), {"en": "blue", "ko": "파란색", "zh": "蓝色"}),
    "yellow": ((235, 200, 30), {"en": "yellow", "ko": "노란색", "zh": "黄色"}),
}
SHAPES = {
    "circle": {"en": "circle", "ko": "원", "zh": "圆形"},
    "square": {"en": "square", "ko": "사각형", "zh": "正方形"},
    "triangle": {"en": "triangle", "ko": "삼각형", "zh": "三角形"},
}
POSITIONS = {  # centre of the shape as a fraction of the image side
    "left": ((0.27, 0.5), {"en": "left", "ko": "왼쪽", "zh": "左边"}),
    "right": ((0.73, 0.5), {"en": "right", "ko": "오른쪽", "zh": "右边"}),
    "top": ((0.5, 0.27), {"en": "top", "ko": "위쪽", "zh": "上边"}),
    "bottom": ((0.5, 0.73), {"en": "bottom", "ko": "아래쪽", "zh": "下边"}),
}
QUESTIONS = {
    "color": {"en": "What color is the shape?", "ko": "도형은 무슨 색입니까?", "zh": "这个图形是什么颜色？"},
    "shape": {"en": "What shape is it?", "ko": "어떤 도형입니까?", "zh": "这是什么形状？"},
    "position": {"en": "Where is the shape?", "ko": "도형은 어디에 있습니까?", "zh": "图形在哪里？"},
}
CAPTIONS = {
    "en": "A {color} {shape} on the {position}.",
    "ko": "{position}에 {color} {shape}이 있습니다.",
    "zh": "{position}有一个{color}{shape}。",
}
# chance accuracy of guessing each question kind uniformly
CHANCE = {"color": 1 / len(COLORS), "shape": 1 / len(SHAPES), "position": 1 / len(POSITIONS)}

# Held-out text for the tokenizer report (tokens per character): sentence templates and vocabulary of their
# own, none of which the training text (captions, questions, answers, stage-0 corpora) uses, so the report
# measures the expansion on text it was not trained on. The sentences share only characters and short endings
# with the training text (Korean verb endings, a few Chinese characters), as new text in a language does.
HELDOUT_WORDS = {
    "en": {"animal": ["cat", "dog", "rabbit", "duck", "fox", "owl"],
           "place": ["kitchen", "garden", "river", "bridge", "library", "forest"],
           "time": ["morning", "evening", "night", "winter", "summer", "weekend"],
           "food": ["bread", "apples", "soup", "rice", "cheese", "noodles"]},
    # nouns end in a vowel so the particles 가 / 를 / 와 fit every filler
    "ko": {"animal": ["고양이", "강아지", "토끼", "오리", "여우", "부엉이"],
           "place": ["부엌", "정원", "강가", "다리", "도서관", "숲속"],
           "time": ["아침", "저녁", "밤", "겨울", "여름", "주말"],
           "food": ["사과", "국수", "치즈", "수프", "피자", "바나나"]},
    "zh": {"animal": ["小猫", "小狗", "兔子", "鸭子", "狐狸", "猫头鹰"],
           "place": ["厨房", "花园", "河边", "桥下", "图书馆", "森林"],
           "time": ["早上", "晚上", "夜里", "冬天", "夏天", "周末"],
           "food": ["面包", "苹果", "米饭", "面条", "奶酪", "鸡汤"]},
}
HELDOUT_TEMPLATES = {
    "en": ["Every {time}, my {animal} sleeps beside our {place}.",
           "Our {animal} found some {food} near this {place}.",
           "Did your {animal} eat {food} during {time}?"],
    "ko": ["{time}마다 {animal}가 {place}에서 잡니다.",
           "{animal}가 어제 {food}를 먹었어요.",
           "{time}에는 {animal}와 함께 {place}에 갔어요."],
    "zh": ["{time}{animal}总是待在{place}睡觉。",
           "我们的{animal}昨天吃了{food}。",
           "{time}的时候，{animal}喜欢去{place}玩。"],
}


@dataclasses.dataclass(frozen=True)
class Scene:
    """One shape of a colour at a position, with small random jitter."""

    color: str
    shape: str
    position: str
    scale: float
    offset: tuple[float, float]


def random_scenes(count: int, seed: int) -> list[Scene]:
    """`count` random scenes, deterministic for `seed`."""
    rng = np.random.default_rng(seed)
    return [Scene(str(rng.choice(list(COLORS))), str(rng.choice(list(SHAPES))), str(rng.choice(list(POSITIONS))),
                  float(rng.uniform(0.16, 0.22)), (float(rng.uniform(-0.05, 0.05)), float(rng.uniform(-0.05, 0.05))))
            for _ in range(count)]


def draw(scene: Scene, size: int = 64) -> Image.Image:
    """The scene as an RGB image on a light background."""
    image = Image.new("RGB", (size, size), (245, 245, 240))
    (cx, cy), _ = POSITIONS[scene.position]
    cx, cy = (cx + scene.offset[0]) * size, (cy + scene.offset[1]) * size
    r = scene.scale * size
    fill, _ = COLORS[scene.color]
    pen = ImageDraw.Draw(image)
    if scene.shape == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif scene.shape == "square":
        pen.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return image


def answer(scene: Scene, kind: str, lang: str) -> str:
    """The answer word of a question kind in a language."""
    if kind == "color":
        return COLORS[scene.color][1][lang]
    if kind == "shape":
        return SHAPES[scene.shape][lang]
    return POSITIONS[scene.position][1][lang]


def caption(scene: Scene, lang: str) -> str:
    """A one-sentence caption of the scene."""
    return CAPTIONS[lang].format(color=answer(scene, "color", lang), shape=answer(scene, "shape", lang),
                                 position=answer(scene, "position", lang))


def caption_record(scene: Scene, image: str, rid: str) -> dict:
    """A parallel caption record (stage 1)."""
    return {"id": rid, "image": image, "conversations": [
        {"from": "human", "value": {la: "<image>\n" for la in LANGS}},
        {"from": "gpt", "value": {la: caption(scene, la) for la in LANGS}}]}


def qa_record(scene: Scene, image: str, rid: str, kinds: list[str]) -> dict:
    """A parallel multi-turn question-answer record (stage 2)."""
    turns = []
    for i, kind in enumerate(kinds):
        turns.append({"from": "human", "value": {la: ("<image>\n" if i == 0 else "") + QUESTIONS[kind][la]
                                                  for la in LANGS}})
        turns.append({"from": "gpt", "value": {la: answer(scene, kind, la) for la in LANGS}})
    return {"id": rid, "image": image, "type": "conversation", "conversations": turns}


def text_corpus(scenes: list[Scene], lang: str) -> list[str]:
    """Stage-0 text: captions and question/answer sentences about scenes, in one language."""
    return [f"{caption(s, lang)} {QUESTIONS[k][lang]} {answer(s, k, lang)}"
            for i, s in enumerate(scenes) for k in [list(QUESTIONS)[i % len(QUESTIONS)]]]


def heldout_text(count: int, lang: str, seed: int) -> list[str]:
    """`count` distinct held-out sentences in `lang` (HELDOUT_TEMPLATES filled from HELDOUT_WORDS), deterministic."""
    rng = np.random.default_rng(seed)
    words, templates = HELDOUT_WORDS[lang], HELDOUT_TEMPLATES[lang]
    slots = [[f for _, f, _, _ in string.Formatter().parse(t) if f] for t in templates]
    if count > sum(int(np.prod([len(words[f]) for f in fs])) for fs in slots):
        raise ValueError(f"held-out text: {count} distinct {lang} lines asked, the templates make fewer")
    lines: dict[str, None] = {}
    while len(lines) < count:
        template = templates[len(lines) % len(templates)]
        lines[template.format(**{k: str(rng.choice(v)) for k, v in words.items()})] = None
    return list(lines)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    """Write records one JSON object per line (UTF-8)."""
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def dataset_paths(out: str | Path) -> dict[str, Path]:
    """The files of a dataset written by `write_dataset` under `out`."""
    out = Path(out)
    paths = {"root": out, **{k: out / f"{k}.jsonl" for k in ("captions", "qa", "questions")}}
    for lang in LANGS:
        paths[f"text_{lang}"] = out / f"text_{lang}.txt"
        paths[f"heldout_text_{lang}"] = out / f"heldout_text_{lang}.txt"
    return paths


def write_lines(path: Path, lines: list[str]) -> Path:
    """Write lines of text (UTF-8)."""
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_dataset(out: str | Path, num_train: int = 600, num_eval: int = 60, image_size: int = 64,
                  seed: int = 0) -> dict[str, Path]:
    """Images, stage-1 captions, stage-2 QA, stage-0 corpora, held-out questions and held-out text under `out`.

    Held-out questions use LLaVA's question format plus `lang` and `answer`:
    {"question_id", "image", "text", "lang", "kind", "answer"}. Held-out text (for the tokenizer
    report): `num_eval` lines per language from HELDOUT_TEMPLATES / HELDOUT_WORDS, which no training
    file uses.
    """
    paths = dataset_paths(out)
    out = paths["root"]
    (out / "images").mkdir(parents=True, exist_ok=True)
    train, held_out = random_scenes(num_train, seed), random_scenes(num_eval, seed + 1)
    kinds = list(QUESTIONS)
    captions, qa = [], []
    for i, scene in enumerate(train):
        name = f"images/train_{i:05d}.png"
        draw(scene, image_size).save(out / name)
        captions.append(caption_record(scene, name, f"cap{i}"))
        order = [kinds[(i + j) % len(kinds)] for j in range(len(kinds))]
        qa.append(qa_record(scene, name, f"qa{i}", order))
    questions = []
    for i, scene in enumerate(held_out):
        name = f"images/eval_{i:05d}.png"
        draw(scene, image_size).save(out / name)
        for kind in kinds:
            for lang in LANGS:
                questions.append({"question_id": f"{i}_{kind}_{lang}", "image": name, "text": QUESTIONS[kind][lang],
                                  "lang": lang, "kind": kind, "answer": answer(scene, kind, lang)})
    write_jsonl(paths["captions"], captions)
    write_jsonl(paths["qa"], qa)
    write_jsonl(paths["questions"], questions)
    text_scenes = random_scenes(num_train, seed + 2)
    for lang in LANGS:
        write_lines(paths[f"text_{lang}"], text_corpus(text_scenes, lang))
        write_lines(paths[f"heldout_text_{lang}"], heldout_text(num_eval, lang, seed + 3))
    return paths


def training_files(out: str | Path) -> list[Path]:
    """The text a demo model or tokenizer trains on: stage-0 corpora, caption and QA records (and the
    ko/zh expansion corpus the demo writes beside them), everything under `out` but held-out files and images."""
    paths = dataset_paths(out)
    held_out = {paths["questions"], *(paths[f"heldout_text_{la}"] for la in LANGS)}
    return sorted(p for p in Path(out).glob("*") if p.is_file() and p.suffix in (".txt", ".jsonl") and p not in held_out)


def chance_accuracy() -> float:
    """Expected accuracy of uniform guessing over the held-out question kinds."""
    return float(np.mean(list(CHANCE.values())))


def text_only_baseline(questions: list[dict]) -> dict:
    """The best a model that ignores the image can do: answer every question with the most common answer of
    its kind in its language, scored on `questions` (held-out records with lang, kind, answer).
    {"by_language": {lang: acc}, "by_kind": {kind: acc}, "overall": acc}."""
    answers: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for q in questions:
        answers[(q["lang"], q["kind"])].append(q["answer"])
    hits = {key: collections.Counter(a).most_common(1)[0][1] for key, a in answers.items()}

    def accuracy(keys: list[tuple[str, str]]) -> float:
        return sum(hits[k] for k in keys) / sum(len(answers[k]) for k in keys)

    langs, kinds = sorted({la for la, _ in answers}), sorted({k for _, k in answers})
    return {"by_language": {la: accuracy([k for k in answers if k[0] == la]) for la in langs},
            "by_kind": {kind: accuracy([k for k in answers if k[1] == kind]) for kind in kinds},
            "overall": accuracy(list(answers))}
