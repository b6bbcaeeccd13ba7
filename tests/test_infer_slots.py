"""The slot engine (continuous batching): a request's greedy tokens do not depend on what else is in the batch,
and equal Engine.generate of the same prompt alone."""

import numpy as np
import pytest

from xllava_jax.data.templates import get_template
from xllava_jax.infer.generate import Engine, GenerationConfig
from xllava_jax.infer.loading import load_model, load_tokenizer_for
from xllava_jax.infer.prompts import load_image, question_prompt
from xllava_jax.infer.slots import NO_TOKEN, RowSampling, SlotEngine, view_length

MAX_NEW = 12


@pytest.fixture(scope="module")
def engine(tiny_llava_hf_dir):
    model, params = load_model(tiny_llava_hf_dir)
    return Engine(model, params, load_tokenizer_for(tiny_llava_hf_dir))


def prompts_and_images(engine, question_set, n):
    """n (ids, images) prompts: questions with and without images, of different lengths."""
    tok, template = engine.tokenizer, get_template("vicuna_v1")
    texts = ["What is in the picture?", "사진에 무엇이 있습니까?", "图片里有什么？", "Describe the colors in detail please.",
             "Hello?"]
    out = []
    for i in range(n):
        has_image = i % 3 != 2
        text = texts[i % len(texts)] + " " * 0 + ("more " * (i % 4))
        ids = question_prompt(tok, template, text, has_image, engine.model.cfg.num_image_tokens)
        img = [load_image(str(question_set["image_root"] / "img" / f"{i % 4}.png"), None, 56)] if has_image else []
        out.append((ids, img))
    return out


def run_slots(slot_engine, requests, max_tokens, steps=4, arrivals=None):
    """Serve `requests` through the slot engine, inserting each as a slot frees (request i not before step
    arrivals[i]); returns each request's token list (EOS included when it ended there)."""
    pending = list(range(len(requests)))
    slot_of, tokens = {}, {i: [] for i in range(len(requests))}
    tick = 0
    eos = set(np.asarray(slot_engine.eos).tolist())
    while pending or slot_of:
        while pending and slot_engine.free_slot() is not None and (arrivals is None or arrivals[pending[0]] <= tick):
            i = pending.pop(0)
            slot = slot_engine.free_slot()
            first = slot_engine.insert(slot, slot_engine.prefill(*requests[i]), max_tokens, RowSampling())
            tokens[i].append(first)
            if first in eos or max_tokens == 1:
                slot_engine.release(slot)
            else:
                slot_of[slot] = i
        tick += 1
        if not slot_of:
            continue
        out = slot_engine.step(steps)
        for slot, i in list(slot_of.items()):
            new = [int(t) for t in out[slot] if t != NO_TOKEN]
            tokens[i] += new
            if len(tokens[i]) >= max_tokens or (new and new[-1] in eos):
                slot_engine.release(slot)
                del slot_of[slot]
    return [tokens[i] for i in range(len(requests))]


def strip_eos(ids, eos):
    return ids[:ids.index(eos)] if eos in ids else ids


def test_slot_answers_equal_engine_generate_alone_whatever_the_batch(engine, question_set):
    requests = prompts_and_images(engine, question_set, 7)
    eos = engine.tokenizer.eos_id
    want = [engine.generate([ids], [img], GenerationConfig(max_new_tokens=MAX_NEW, batch_size=1))[0].tokens
            for ids, img in requests]
    # 3 slots for 7 requests arriving over time: rows join and leave mid-generation, yet each gets its tokens alone
    crowd = run_slots(SlotEngine(engine, 3, 256, [eos]), requests, MAX_NEW, steps=3, arrivals=[0, 0, 1, 2, 2, 5, 9])
    assert [strip_eos(c, eos) for c in crowd] == want
    assert all(len(c) == MAX_NEW or c[-1] == eos for c in crowd)


def test_view_length_holds_the_longest_row():
    assert view_length(1, 4096) == 64 and view_length(65, 4096) == 128 and view_length(128, 4096) == 128
    assert view_length(5000, 4096) == 4096
