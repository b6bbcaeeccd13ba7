"""Multi-turn chat about one image: the conversation so far is re-encoded with the template each turn."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from xllava_jax.data.templates import Template, Turn
from xllava_jax.infer.generate import Engine, Generation, GenerationConfig
from xllava_jax.infer.prompts import conversation_prompt, num_image_tokens, with_image_placeholder


class Chat:
    """A conversation with a model (optionally about an image); `ask` streams the answer's text."""

    def __init__(self, engine: Engine, template: Template, image: np.ndarray | None = None,
                 config: GenerationConfig = GenerationConfig(max_new_tokens=512)):
        if engine.tokenizer is None:
            raise ValueError("chat needs an engine with a tokenizer")
        if image is not None and not num_image_tokens(engine.model):
            raise ValueError(f"{type(engine.model).__name__} is text-only; chat without --image")
        self.engine, self.template, self.image, self.config = engine, template, image, config
        self.turns: list[Turn] = []

    def ask(self, question: str) -> Iterator[str]:
        """Text deltas of the answer as they are generated; the answer joins the history at the end."""
        text = with_image_placeholder(question, self.image is not None) if not self.turns else question
        turns = [*self.turns, ("human", text)]
        ids = conversation_prompt(self.engine.tokenizer, self.template, turns, num_image_tokens(self.engine.model))
        images = [self.image] if self.image is not None else []
        generation: Generation = yield from self.engine.stream(ids, images, self.config)
        self.turns = [*turns, ("gpt", generation.text.strip())]

    def reset(self) -> None:
        """Forget the conversation (the image stays)."""
        self.turns = []
