"""The HF export used the standard way (AutoProcessor + chat template + LlavaForConditionalGeneration.generate)
gives our prompt ids and our greedy answers on a demo-sized model with the demo's expanded tokenizer."""

import json

import pytest
import transformers
from PIL import Image

import hf_reference as ref
from xllava_jax.data.chat_template import chat_template
from xllava_jax.convert.hf import load_hf_llava, save_hf_llava
from xllava_jax.convert.verify import processor_answers, question_messages
from xllava_jax.data.templates import get_template, render_string
from xllava_jax.infer.generate import Engine, GenerationConfig
from xllava_jax.infer.prompts import load_image, question_prompt, with_image_placeholder
from xllava_jax.tokenizer.spm import load_tokenizer

DEMO_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512)
DEMO_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                   patch_size=8)


@pytest.fixture(scope="module")
def export(demo_data_root, tmp_path_factory):
    """(our model, params, tokenizer, HF export dir) of a random demo-sized LLaVA over the demo tokenizer."""
    tok = load_tokenizer(demo_data_root / "tokenizer")
    src = tmp_path_factory.mktemp("random_llava")
    hf = ref.llava(seed=3, text={**DEMO_TEXT, "vocab_size": tok.vocab_size}, vision=DEMO_VISION,
                   image_token_index=tok.image_token_id)
    hf.config.pad_token_id = tok.pad_id
    hf.save_pretrained(src)
    model, params = load_hf_llava(src)
    out = tmp_path_factory.mktemp("export") / "hf"
    save_hf_llava(model, params, out, tokenizer_dir=demo_data_root / "tokenizer", template="vicuna_v1")
    return model, params, tok, out


def test_processor_gives_our_ids_and_greedy_answers(export, demo_data_root):
    model, params, tok, out = export
    records = [json.loads(line) for line in (demo_data_root / "questions.jsonl").read_text().splitlines()]
    by_lang = {}
    for r in records:  # two questions per language, and one text-only question
        if len(by_lang.setdefault(r.get("lang", "en"), [])) < 2:
            by_lang[r.get("lang", "en")].append(r)
    picked = [r for rs in by_lang.values() for r in rs]
    assert {"en", "ko", "zh"} <= set(by_lang)
    questions = [(r["text"], Image.open(demo_data_root / r["image"])) for r in picked] + [("Hello there?", None)]
    template, n = get_template("vicuna_v1"), model.cfg.num_image_tokens
    ours = [question_prompt(tok, template, t, img is not None, n) for t, img in questions]
    images = [[load_image(r["image"], str(demo_data_root), model.cfg.vision.image_size)] for r in picked] + [[]]
    config = GenerationConfig(max_new_tokens=6, batch_size=1)
    our_tokens = [g.tokens for g in Engine(model, params, tok).generate(ours, images, config)]
    hf_ids, hf_tokens, _ = processor_answers(out, questions, max_new_tokens=6, batch_size=1)
    assert hf_ids == ours
    assert hf_tokens == our_tokens


def test_chat_template_renders_training_prompt(export):
    _, _, _, out = export
    processor = transformers.AutoProcessor.from_pretrained(str(out))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    turns = [("human", "What shape is red?"), ("gpt", "A circle."), ("human", "And blue?")]
    messages = question_messages(turns[0][1], True) + [{"role": "assistant", "content": turns[1][1]},
                                                       {"role": "user", "content": turns[2][1]}]
    ours = [(r, with_image_placeholder(t, True) if i == 0 else t) for i, (r, t) in enumerate(turns)]
    want = render_string(get_template("vicuna_v1").segments(ours, True))
    assert "<s>" + processor.apply_chat_template(messages, add_generation_prompt=True) == want
    assert "<s>" + tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == want


@pytest.mark.parametrize("name", ["llava_llama_2", "plain"])
def test_chat_templates_of_other_conversation_templates(hf_llama_tokenizer_dir, name):
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_llama_tokenizer_dir))
    turns = [("human", "<image>\nWhat is it?"), ("gpt", "A cat.")] + ([("human", "Color?")] if name != "plain" else [])
    messages = question_messages("What is it?", True) + [{"role": "assistant", "content": "A cat."}]
    messages += [{"role": "user", "content": "Color?"}] if name != "plain" else []
    want = render_string(get_template(name).segments(turns, True))
    got = tokenizer.apply_chat_template(messages, chat_template=chat_template(name), tokenize=False,
                                        add_generation_prompt=True)
    assert "<s>" + got == want
