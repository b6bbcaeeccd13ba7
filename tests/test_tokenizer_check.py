"""A tokenizer that does not match the model is refused with a message naming the mismatch."""

from types import SimpleNamespace

import pytest

from xllava_jax.models import LlamaConfig, LlavaConfig
from xllava_jax.models.vocab import check_tokenizer


def tok(vocab_size: int, image_token_id: int) -> SimpleNamespace:
    return SimpleNamespace(vocab_size=vocab_size, image_token_id=image_token_id)


def test_matching_tokenizer_passes_and_mismatches_raise():
    llava = LlavaConfig(text=LlamaConfig(vocab_size=128), image_token_id=120)
    check_tokenizer(llava, tok(122, 120))
    check_tokenizer(llava.text, tok(128, 127))  # a bare decoder has no image token to agree on
    with pytest.raises(ValueError, match="tokenizer has 200 ids but the model's vocabulary is 128"):
        check_tokenizer(llava, tok(200, 120))
    with pytest.raises(ValueError, match="<image> id is 121 but the model's image_token_id is 120"):
        check_tokenizer(llava, tok(122, 121))
