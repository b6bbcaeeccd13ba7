"""Conversation templates (vicuna_v1, llava_llama_2, plain) rendered as segments, and their registry.

A template turns alternating (human, gpt) turns into a list of `Segment`s. Text segments that follow
other text begin with a space; the tokenizer drops that one space and lets SentencePiece's dummy prefix
stand for it, so the concatenated ids equal a legacy LLaMA tokenization of the whole rendered string.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

IMAGE_PLACEHOLDER = "<image>"
BOS, EOS, TEXT = "bos", "eos", "text"

Turn = tuple[str, str]  # (role "human" | "gpt", text)


@dataclasses.dataclass(frozen=True)
class Segment:
    """One piece of a rendered conversation: BOS, EOS or text (text may contain `<image>`); `trained` marks labels."""

    kind: str
    text: str = ""
    trained: bool = False


@dataclasses.dataclass(frozen=True)
class Template:
    """A named conversation format: `render(turns, add_generation_prompt)` -> segments."""

    name: str
    system: str
    render: Callable[[Sequence[Turn], str, bool], list[Segment]]

    def segments(self, turns: Sequence[Turn], add_generation_prompt: bool = False) -> list[Segment]:
        """Segments of `turns`; with `add_generation_prompt` the last (human) turn is followed by the answer prefix."""
        return self.render(turns, self.system, add_generation_prompt)


def render_string(segments: Sequence[Segment]) -> str:
    """The full prompt string of `segments` (`<s>`, `</s>` written out), as LLaVA would build it."""
    return "".join({BOS: "<s>", EOS: "</s>"}.get(s.kind, s.text) for s in segments)


def _pairs(turns: Sequence[Turn]) -> list[tuple[str, str | None]]:
    """Group alternating turns into (question, answer-or-None) rounds."""
    return [(turns[i][1], turns[i + 1][1] if i + 1 < len(turns) else None) for i in range(0, len(turns), 2)]


def render_vicuna_v1(turns: Sequence[Turn], system: str, gen: bool) -> list[Segment]:
    """`{system} USER: {q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>`."""
    segs = [Segment(BOS)]
    for i, (q, a) in enumerate(_pairs(turns)):
        head = f"{system} USER: {q} ASSISTANT:" if i == 0 else f"USER: {q} ASSISTANT:"
        segs.append(Segment(TEXT, head))
        if a is not None:
            segs += [Segment(TEXT, f" {a}", True), Segment(EOS, trained=True)]
    return segs


def render_llava_llama_2(turns: Sequence[Turn], system: str, gen: bool) -> list[Segment]:
    """`[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{q1} [/INST] {a1} </s><s>[INST] {q2} [/INST] {a2} </s>`."""
    segs = []
    for i, (q, a) in enumerate(_pairs(turns)):
        q = f"<<SYS>>\n{system}\n<</SYS>>\n\n{q}" if i == 0 else q
        segs += [Segment(BOS), Segment(TEXT, f"[INST] {q} [/INST]")]
        if a is not None:
            segs += [Segment(TEXT, f" {a} ", True), Segment(EOS, trained=True)]
    return segs


def render_plain(turns: Sequence[Turn], system: str, gen: bool) -> list[Segment]:
    """`<image>{caption}\\n` (stage 1): the human text is dropped except its image; caption and `\\n` trained."""
    image = IMAGE_PLACEHOLDER if IMAGE_PLACEHOLDER in turns[0][1] else ""
    segs = [Segment(BOS), Segment(TEXT, image)]
    if len(turns) > 1:
        segs.append(Segment(TEXT, turns[1][1] + "\n", True))
    return segs


VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
LLAMA_2_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual "
                  "content that the user provides, and assist the user with a variety of tasks using natural language.")

TEMPLATES: dict[str, Template] = {}


def register_template(template: Template) -> Template:
    """Add `template` to the registry under its name (replacing any previous one)."""
    TEMPLATES[template.name] = template
    return template


def get_template(name: str) -> Template:
    """The registered template called `name`."""
    if name not in TEMPLATES:
        raise KeyError(f"unknown conversation template {name!r}; registered: {sorted(TEMPLATES)}")
    return TEMPLATES[name]


register_template(Template("vicuna_v1", VICUNA_SYSTEM, render_vicuna_v1))
register_template(Template("llava_llama_2", LLAMA_2_SYSTEM, render_llava_llama_2))
register_template(Template("plain", "", render_plain))
