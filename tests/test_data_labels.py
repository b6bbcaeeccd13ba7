"""Templates and labels: trained spans are exactly the assistant answers + `</s>`; ids equal LLaVA's tokenization."""

import pytest
from transformers import LlamaTokenizer

from data_fixtures import QA
from xllava_jax.data.labels import IGNORE_INDEX, encode_conversation, encode_prompt, encode_text_document
from xllava_jax.data.templates import get_template, render_string
from xllava_jax.tokenizer.spm import load_tokenizer

N_IMG = 5
ANSWER_SUFFIX = {"vicuna_v1": "", "llava_llama_2": " "}


@pytest.fixture(scope="module")
def tok(hf_llama_tokenizer_dir):
    tok = load_tokenizer(hf_llama_tokenizer_dir)
    tok.legacy = True  # the reference below is transformers' legacy tokenizer
    return tok


@pytest.fixture(scope="module")
def ref_tok(hf_llama_tokenizer_dir):
    """transformers' legacy LlamaTokenizer (what LLaVA uses) on the same tokenizer.model."""
    return LlamaTokenizer.from_pretrained(hf_llama_tokenizer_dir, legacy=True)


def conversations():
    """(name, turns) for en/ko/zh, single/multi-turn, with and without image."""
    out = []
    for lang, qa in QA.items():
        for image in (True, False):
            turns = []
            for j, (q, a) in enumerate(qa):
                turns += [("human", ("<image>\n" if image and j == 0 else "") + q), ("gpt", a)]
            out.append((f"{lang}-{'img' if image else 'text'}", turns))
    return out


def spans(ids, labels):
    """Contiguous runs of trained tokens."""
    out, cur = [], []
    for t, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            assert lab == t
            cur.append(t)
        elif cur:
            out.append(cur)
            cur = []
    return out + ([cur] if cur else [])


def reference_ids(ref_tok, tok, prompt: str) -> list[int]:
    """LLaVA's tokenizer_image_token: split on <image>, tokenize chunks, insert N image tokens."""
    ids = [1]
    for j, chunk in enumerate(prompt.split("<image>")):
        if j:
            ids += [tok.image_token_id] * N_IMG
        ids += ref_tok(chunk, add_special_tokens=False).input_ids if chunk else []
    return ids


@pytest.mark.parametrize("template", ["vicuna_v1", "llava_llama_2"])
@pytest.mark.parametrize("name,turns", conversations())
def test_trained_spans_are_answers_plus_eos(tok, ref_tok, template, name, turns):
    tmpl = get_template(template)
    ids, labels = encode_conversation(tok, tmpl, turns, N_IMG)
    answers = [t for r, t in turns if r == "gpt"]
    got = spans(ids, labels)
    assert len(got) == len(answers)
    for span, answer in zip(got, answers):
        assert span[-1] == tok.eos_id
        assert tok.decode(span[:-1]) == answer + ANSWER_SUFFIX[template]
    assert ids.count(tok.image_token_id) == (N_IMG if "img" in name else 0)
    # the whole sequence equals the reference tokenization of the rendered LLaVA prompt string
    prompt = render_string(tmpl.segments(turns))
    assert prompt.startswith("<s>")
    assert ids == reference_ids(ref_tok, tok, prompt[3:])


def test_rendered_strings_match_design(tok):
    t = [("human", "<image>\nq1"), ("gpt", "a1"), ("human", "q2"), ("gpt", "a2")]
    v = get_template("vicuna_v1")
    assert render_string(v.segments(t)) == f"<s>{v.system} USER: <image>\nq1 ASSISTANT: a1</s>USER: q2 ASSISTANT: a2</s>"
    l2 = get_template("llava_llama_2")
    assert render_string(l2.segments(t)) == (f"<s>[INST] <<SYS>>\n{l2.system}\n<</SYS>>\n\n<image>\nq1 [/INST] a1 </s>"
                                             "<s>[INST] q2 [/INST] a2 </s>")
    assert render_string(get_template("plain").segments(t[:2])) == "<s><image>a1\n"


@pytest.mark.parametrize("template", ["vicuna_v1", "llava_llama_2"])
def test_prompt_ends_where_answer_starts(tok, template):
    tmpl = get_template(template)
    turns = [("human", "<image>\n" + QA["ko"][0][0]), ("gpt", QA["ko"][0][1]), ("human", QA["ko"][1][0]),
             ("gpt", QA["ko"][1][1])]
    ids, labels = encode_conversation(tok, tmpl, turns, N_IMG)
    prompt = encode_prompt(tok, tmpl, turns[:3], N_IMG)
    assert ids[: len(prompt)] == prompt
    assert labels[len(prompt)] != IGNORE_INDEX and labels[len(prompt) - 1] == IGNORE_INDEX
    with pytest.raises(ValueError):
        encode_prompt(tok, tmpl, turns, N_IMG)


def test_plain_trains_caption_only(tok):
    ids, labels = encode_conversation(tok, get_template("plain"), [("human", "<image>\nignored"), ("gpt", "a red cat")], N_IMG)
    assert ids[:1 + N_IMG] == [1] + [tok.image_token_id] * N_IMG
    assert tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]) == "a red cat\n"


def test_text_document_all_trained_but_bos(tok):
    ids, labels = encode_text_document(tok, "이 사진 에 는 고양이")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and labels[0] == IGNORE_INDEX
    assert labels[1:] == ids[1:]


def test_unknown_template_named():
    with pytest.raises(KeyError, match="nope"):
        get_template("nope")
