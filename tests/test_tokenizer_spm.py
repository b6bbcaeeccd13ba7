"""SentencePiece tokenizer: ids equal to transformers' LlamaTokenizer built from the same tokenizer.model."""

import pickle

import pytest
from transformers import AutoTokenizer

from xllava_jax.tokenizer.spm import Tokenizer, load_tokenizer

TEXTS = ["the cat sits on the table.", "USER: <image>\nwhat is there ASSISTANT: 고양이</s>USER: hi",
         "<image>\n이 사진 에 는 고양이 <pad> 这 张 图片 中 有 一只 猫", "a  b\n\n c  ", "숫자 12345 and ünïcode ✓"]


@pytest.fixture(scope="module")
def hf_tok(hf_llama_tokenizer_dir):
    return AutoTokenizer.from_pretrained(hf_llama_tokenizer_dir)


def test_hf_directory_ids_match_transformers(hf_llama_tokenizer_dir, hf_tok):
    tok = load_tokenizer(hf_llama_tokenizer_dir)
    for text in TEXTS:
        assert tok.encode(text, bos=True) == hf_tok(text).input_ids, text
    assert tok.image_token_id == hf_tok.convert_tokens_to_ids("<image>")
    assert tok.pad_id == hf_tok.pad_token_id
    assert tok.vocab_size == len(hf_tok)


def test_legacy_mode_matches_transformers_legacy(hf_llama_tokenizer_dir):
    from transformers import LlamaTokenizer
    ref = LlamaTokenizer.from_pretrained(hf_llama_tokenizer_dir, legacy=True)
    tok = load_tokenizer(hf_llama_tokenizer_dir)
    tok.legacy = True
    for text in [t for t in TEXTS if "<pad>" not in t]:  # transformers' legacy mode strips a space after <pad>
        assert tok.encode(text, bos=True) == ref(text).input_ids, text


def test_added_tokens_appended_after_spm_vocab(spm_model_path):
    tok = load_tokenizer(spm_model_path)
    n = tok.sp_vocab_size
    assert (tok.image_token_id, tok.pad_id, tok.vocab_size) == (n, n + 1, n + 2)
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    ids = tok.encode("hello 고양이 猫", bos=True, eos=True)
    assert ids[0] == 1 and ids[-1] == 2
    assert tok.decode(ids, skip_special=True) == "hello 고양이 猫"
    assert tok.decode([tok.image_token_id, *tok.encode_plain("cat")]) == "<image>cat"


def test_expanded_vocabulary_works_unchanged(tmp_path):
    from data_fixtures import generate_multilingual_text, train_llama_style_spm
    path = train_llama_style_spm(tmp_path / "big", vocab_size=1300, lines=generate_multilingual_text(4000, seed=1))
    tok = load_tokenizer(path)
    assert tok.sp_vocab_size == 1300 and tok.image_token_id == 1300 and tok.pad_id == 1301
    text = "이 사진 에 는 고양이 가 있습니다"
    assert tok.decode(tok.encode(text)) == text
    assert max(tok.encode(text)) < 1300


def test_pickle_roundtrip(spm_model_path):
    tok = load_tokenizer(spm_model_path)
    tok2 = pickle.loads(pickle.dumps(tok))
    assert tok2.encode(TEXTS[1]) == tok.encode(TEXTS[1]) and tok2.vocab_size == tok.vocab_size


def test_existing_piece_is_reused(spm_model_path):
    tok = Tokenizer(spm_model_path.read_bytes(), {"<image>": 7})
    assert tok.image_token_id == 7 and tok.pad_id == tok.sp_vocab_size
