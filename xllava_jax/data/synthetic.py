"""The demo's synthetic multilingual dataset: PIL-drawn scenes of one coloured shape at a
position, with parallel English/Korean/Chinese captions, questions and answers, stage-0 text
corpora, and held-out questions. Nothing is downloaded."""

from __future__ import annotations

import dataclasses
import json
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
    report) describes the held-out scenes.
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
        write_lines(paths[f"heldout_text_{lang}"], text_corpus(held_out, lang))
    return paths


def chance_accuracy() -> float:
    """Expected accuracy of uniform guessing over the held-out question kinds."""
    return float(np.mean(list(CHANCE.values())))
