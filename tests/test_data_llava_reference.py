"""Training ids and labels equal LLaVA's own: train.py's preprocess_v1 / preprocess_llama_2 / preprocess_plain,
preprocess_multimodal, mm_utils.tokenizer_image_token and the collator, run from the installed `llava` package
over SentencePiece itself tokenizing as transformers 4.31's slow LlamaTokenizer (tests/llava_reference.py)."""

import copy

import numpy as np
import pytest

pytest.importorskip("llava", reason="pip install --no-deps llava-torch==1.2.2.post1")

from data_fixtures import generate_multilingual_text, train_llama_style_spm
from llava_reference import SlowLlamaTokenizer, llava_preprocess, load_llava_train
from xllava_jax.data.formats import normalize_llava_record
from xllava_jax.data.labels import IGNORE_INDEX
from xllava_jax.data.processing import SampleProcessor
from xllava_jax.data.sequences import collate
from xllava_jax.tokenizer.spm import Tokenizer

N_IMG = 5
LLAVA_IMAGE = -200  # llava.constants.IMAGE_TOKEN_INDEX


def conv(*turns):
    """LLaVA `conversations` from alternating human/gpt texts."""
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(turns)]


RECORDS = {  # name -> (conversations, has image)
    "en_multi": (conv("<image>\nWhat is on the table?", "A red cat sits on the table.",
                      "How many people are there?", "Two people."), True),
    "image_after_text": (conv("What is there?\n<image>", "A dog."), True),
    "image_only_turn": (conv("<image>", "A red car on the street.", "What color is it?", "Red."), True),
    "ko_multi": (conv("<image>\n테이블 위에 무엇이 있습니까?", "빨간 고양이가 테이블 위에 있습니다.",
                      "사람이 몇 명 있습니까?", "두 명 있습니다."), True),
    "zh_multi": (conv("<image>\n桌子上有什么？", "桌子上有一只红色的猫。", "有多少人？", "有两个人。"), True),
    "text_only": (conv("describe the sky", "The sky is blue.", "and the tree?", "green tree"), False),
    "leading_spaces": (conv("<image>\n  what is  there ", " a red bus", "again?", "  two  cats  "), True),
    "ko_text_only": (conv("하늘 색 설명 해 주세요", "파란 하늘 입니다."), False),
}
CAPTIONS = [" a red bus", "a red bus", "고양이 가 있습니다", " 这 张 图片", "two  dogs  ", "\nthe sky"]


@pytest.fixture(scope="module")
def spm_proto(tmp_path_factory):
    """A LLaMA-style SentencePiece model that has also seen role names right after `</s>` and `<s>`."""
    lines = generate_multilingual_text() + ["yes.</s>USER: what is it? ASSISTANT: a cat.</s>USER: hi"] * 30 \
        + ["[/INST] a cat </s><s>[INST] what [/INST]"] * 30
    return train_llama_style_spm(tmp_path_factory.mktemp("ref_spm") / "tok", lines=lines).read_bytes()


@pytest.fixture(scope="module")
def llava():
    return load_llava_train()


def expand_images(ids, labels, image_id):
    """LLaVA's one image placeholder per image as N_IMG image tokens (what its model does to the embeddings)."""
    out_ids, out_labels = [], []
    for i, lab in zip(ids, labels):
        n = N_IMG if i == LLAVA_IMAGE else 1
        out_ids += [image_id if i == LLAVA_IMAGE else i] * n
        out_labels += [IGNORE_INDEX if i == LLAVA_IMAGE else lab] * n
    return out_ids, out_labels


def ours(tok, template, source, has_image, max_len=2048):
    """Our example of the record through the LLaVA loader's normalisation and SampleProcessor."""
    raw = {"id": "r", "conversations": copy.deepcopy(source), **({"image": "x.jpg"} if has_image else {})}
    record = normalize_llava_record(raw, "r")
    proc = SampleProcessor(tok, template, max_len=max_len, num_image_tokens=N_IMG, load_images=False)
    example = proc.process(record)
    assert len(example["content"]) == len(example["input_ids"])  # the content mask follows the same chunks
    return example


def theirs(llava, tok, ref, template, source, has_image, max_len=2048):
    """LLaVA's ids/labels, images expanded, truncated to max_len as LLaVA's model truncates its inputs."""
    ids, labels = llava_preprocess(llava, template, source, ref, has_image)
    ids, labels = expand_images(ids, labels, tok.image_token_id)
    return ids[:max_len], labels[:max_len]


@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("template", ["vicuna_v1", "llava_llama_2"])
@pytest.mark.parametrize("name", sorted(RECORDS))
def test_conversation_ids_and_labels_equal_llava(llava, spm_proto, template, name, legacy):
    tok, ref = Tokenizer(spm_proto, legacy=legacy), SlowLlamaTokenizer(spm_proto, legacy=legacy)
    source, has_image = RECORDS[name]
    ids, labels = theirs(llava, tok, ref, template, source, has_image)
    ex = ours(tok, template, source, has_image)
    assert ex["input_ids"].tolist() == ids
    if all(x == IGNORE_INDEX for x in labels) and not (template == "llava_llama_2" and not legacy):
        pytest.fail(f"LLaVA reports a tokenization mismatch on {name}")
    if any(x != IGNORE_INDEX for x in labels):
        assert ex["labels"].tolist() == labels


def test_image_only_turn_has_no_newline(llava, spm_proto):
    tok = Tokenizer(spm_proto)
    source, _ = RECORDS["image_only_turn"]
    ex = ours(tok, "vicuna_v1", source, True)
    after_image = ex["input_ids"].tolist().index(tok.image_token_id) + N_IMG
    assert tok.decode(ex["input_ids"][after_image:after_image + 4]).startswith(" ASSISTANT:")
    assert "\n" not in tok.decode(ex["input_ids"][:after_image + 4])


@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("caption", CAPTIONS)
def test_plain_caption_ids_and_labels_equal_llava(llava, spm_proto, caption, legacy):
    tok, ref = Tokenizer(spm_proto, legacy=legacy), SlowLlamaTokenizer(spm_proto, legacy=legacy)
    source = conv("<image>\nDescribe the image briefly.", caption)
    ids, labels = theirs(llava, tok, ref, "plain", source, True)
    ex = ours(tok, "plain", source, True)
    assert ex["input_ids"].tolist() == ids
    assert ex["labels"].tolist() == labels


def test_leading_space_caption_keeps_its_space_token(spm_proto):
    tok = Tokenizer(spm_proto)
    ex = ours(tok, "plain", conv("<image>", " a red bus"), True)
    text_ids = [i for i in ex["input_ids"].tolist() if i not in (tok.bos_id, tok.image_token_id)]
    assert [tok.sp.id_to_piece(i) for i in text_ids[:2]] == ["\u2581", "\u2581a"]


@pytest.mark.parametrize("max_len", [12, 30, 47])
@pytest.mark.parametrize("name", ["text_only", "en_multi", "ko_multi"])
def test_truncated_records_equal_llava(llava, spm_proto, name, max_len):
    tok, ref = Tokenizer(spm_proto), SlowLlamaTokenizer(spm_proto, model_max_length=max_len)
    source, has_image = RECORDS[name]
    ids, labels = theirs(llava, tok, ref, "vicuna_v1", source, has_image, max_len)
    try:
        ex = ours(tok, "vicuna_v1", source, has_image, max_len)
    except Exception as e:  # a cut inside the image run or nothing left to train: we skip, LLaVA trains nothing
        assert tok.image_token_id in ids[max_len - 1:max_len] or all(x == IGNORE_INDEX for x in labels), e
        return
    assert ex["input_ids"].tolist() == ids
    assert ex["labels"].tolist() == labels


def test_collated_batch_equals_llava_collator(llava, spm_proto):
    import torch
    tok, ref = Tokenizer(spm_proto), SlowLlamaTokenizer(spm_proto)
    names = ["text_only", "ko_text_only"]
    instances, examples = [], []
    for name in names:
        source, _ = RECORDS[name]
        ids, labels = llava_preprocess(llava, "vicuna_v1", source, ref, False)
        instances.append({"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)})
        examples.append(ours(tok, "vicuna_v1", source, False))
    batch = llava.DataCollatorForSupervisedDataset(ref)(instances)
    width = batch["input_ids"].shape[1]
    mine = collate([[e] for e in examples], len(names), width, tok.pad_id, 1, (3, 4, 4))
    mask = batch["attention_mask"].numpy()
    np.testing.assert_array_equal(mine["labels"], batch["labels"].numpy())
    np.testing.assert_array_equal(mine["attention_mask"].astype(bool), mask)
    np.testing.assert_array_equal(np.where(mask, mine["input_ids"], 0), np.where(mask, batch["input_ids"].numpy(), 0))


@pytest.mark.parametrize("answer", ["the tag </s> ends it", "say ASSISTANT: no", "literal <s> here"])
def test_records_llava_discards_are_trained_with_special_text_kept_as_text(llava, spm_proto, answer):
    """LLaVA masks such a record whole ("tokenization mismatch"); we train its answer, `<s>`/`</s>` kept as text."""
    tok, ref = Tokenizer(spm_proto), SlowLlamaTokenizer(spm_proto)
    source = conv("<image>\nread the sign", answer)
    _, labels = theirs(llava, tok, ref, "vicuna_v1", source, True)
    ex = ours(tok, "vicuna_v1", source, True)
    trained = [i for i, lab in zip(ex["input_ids"].tolist(), ex["labels"].tolist()) if lab != IGNORE_INDEX]
    assert tok.decode(trained) == f"{answer}</s>"
    assert trained.count(tok.eos_id) == 1 and tok.bos_id not in trained
    if "ASSISTANT: " in answer or "</s>" in answer:
        assert all(x == IGNORE_INDEX for x in labels)


def test_non_legacy_unk_after_eos_is_what_431_gives_and_is_logged(llava, spm_model_path, caplog):
    """A vocabulary with `▁USER` as one piece: transformers 4.31's non-legacy rule turns `USER` after `</s>` into
    `<unk>`; our ids are the same, and a warning names the setting to change."""
    proto = spm_model_path.read_bytes()
    tok, ref = Tokenizer(proto, legacy=False), SlowLlamaTokenizer(proto, legacy=False)
    source, has_image = RECORDS["en_multi"]
    ids, _ = theirs(llava, tok, ref, "vicuna_v1", source, has_image)
    with caplog.at_level("WARNING"):
        ex = ours(tok, "vicuna_v1", source, has_image)
    assert ex["input_ids"].tolist() == ids and tok.sp.unk_id() in ids
    assert "legacy" in caplog.text and "<unk>" in caplog.text
