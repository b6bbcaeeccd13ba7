"""Vocabulary expansion: old ids kept, new pieces used, exact round trips, the report, and transformers'
tokenizer from the exported files agreeing with sentencepiece (the references are sentencepiece and transformers)."""

import io
import json

import pytest
import sentencepiece as spm
import transformers

import vocab_text
from data_fixtures import generate_multilingual_text
from xllava_jax.tokenizer import expand
from xllava_jax.tokenizer.__main__ import main as tokenizer_main
from xllava_jax.tokenizer.hf_export import write_hf_tokenizer
from xllava_jax.tokenizer.spm import load_tokenizer

MIXED = ["Hello world, 123 cats! 고양이가 학교에서 공부합니다. 我们今天在北京学习中文。",
         "Emoji 😀🎉 and 숫자 2024년 3월 15일 (금) — 价格是 99.5 元？ ok...",
         "선생님은 도서관에서 책을 읽습니다!\n老师喜欢音乐，大家都很高兴。\tTabs\tand  double  spaces.",
         "ünïcode ✓ → 한국어/中文/English mixed: a+b=c; #tag @user ~50% [x]{y}"]
ENGLISH = [line for i, line in enumerate(generate_multilingual_text(300, seed=5)) if i % 3 == 0]
KOBERT_STYLE = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]", "[unused1]", "<unk>", "<s>",
                *vocab_text.KO_NOUNS, "##에서", "##습니다", "##이", *vocab_text.KO_NOUNS[:5], "두 단어", "the",
                "2024년", "##33", "7"]


def sp_of(path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(path))


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpora")
    files = {f"{lang}_{part}": vocab_text.write_text(d / f"{lang}_{part}.txt", vocab_text.generate(lang, n, seed))
             for lang, part, n, seed in [("ko", "train", 1500, 1), ("ko", "heldout", 150, 2),
                                         ("zh", "train", 1500, 3), ("zh", "heldout", 150, 4)]}
    files["train"] = d / "ko_zh_train.txt"
    files["train"].write_text(files["ko_train"].read_text() + files["zh_train"].read_text(), encoding="utf-8")
    (d / "vocab.txt").write_text("\n".join(KOBERT_STYLE) + "\n", encoding="utf-8")
    files["vocab"] = d / "vocab.txt"
    return files


@pytest.fixture(scope="module")
def expanded(spm_model_path, corpora, tmp_path_factory):
    """{'wordpiece': dir, 'corpus': dir}: the test tokenizer expanded from a KoBERT-style vocab.txt and a corpus."""
    out = tmp_path_factory.mktemp("expanded")
    tokenizer_main(["expand", "--base", str(spm_model_path), "--add-vocab", str(corpora["vocab"]),
                    "--out", str(out / "wordpiece")])
    tokenizer_main(["expand", "--base", str(spm_model_path), "--train-corpus", str(corpora["train"]),
                    "--new-pieces", "400", "--out", str(out / "corpus")])
    return {"wordpiece": out / "wordpiece", "corpus": out / "corpus"}


def test_vocab_file_formats_and_skipped_entries(spm_model_path, corpora):
    pieces, info = expand.pieces_from_vocab_file(corpora["vocab"])
    assert info == {"format": "wordpiece", "special": 9, "invalid": 1}
    assert "▁학교" in pieces and "에서" in pieces and "습니다" in pieces and "##에서" not in pieces
    assert not any(p.startswith(("[", "<", "▁[")) for p in pieces)
    words, info = expand.pieces_from_vocab_file(corpora["ko_heldout"].parent / "vocab.txt", "words")
    assert "▁##에서" in words and info["format"] == "words"
    base = sp_of(spm_model_path)
    proto, stats = expand.append_pieces(expand.read_model_proto(spm_model_path), pieces)
    already = {p for p in pieces if base.piece_to_id(p) != base.unk_id()}
    assert stats.existing == sum(p in already for p in pieces) and "▁the" in already
    assert stats.requested == len(pieces) == stats.existing + stats.duplicate + stats.added + stats.digits
    assert stats.digits == 3  # the base splits digits: "▁2024년", "33" and "▁7" are not appended
    assert stats.duplicate >= 5  # the repeated nouns, plus pieces appended before as support pieces
    new = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    digits = {p for p in pieces if any(c.isdigit() for c in p)}
    assert all(new.piece_to_id(p) >= base.get_piece_size() for p in set(pieces) - already - digits)
    assert all(new.piece_to_id(p) == new.unk_id() for p in digits - already)
    assert new.get_piece_size() == base.get_piece_size() + stats.added + stats.support


@pytest.mark.parametrize("kind", ["wordpiece", "corpus"])
def test_old_ids_scores_and_english_encoding_unchanged(spm_model_path, expanded, kind):
    base, new = sp_of(spm_model_path), sp_of(expanded[kind] / "tokenizer.model")
    assert new.get_piece_size() > base.get_piece_size()
    for i in range(base.get_piece_size()):
        assert (new.id_to_piece(i), new.get_score(i), new.is_control(i), new.is_byte(i), new.is_unknown(i)) == \
               (base.id_to_piece(i), base.get_score(i), base.is_control(i), base.is_byte(i), base.is_unknown(i))
    assert [new.encode(t) for t in ENGLISH] == [base.encode(t) for t in ENGLISH]
    summary = json.loads((expanded[kind] / "expansion.json").read_text())
    assert summary["final_pieces"] == new.get_piece_size() and summary["unreachable"] == 0


def test_listed_words_encode_as_one_piece(expanded):
    sp = sp_of(expanded["wordpiece"] / "tokenizer.model")
    for word in vocab_text.KO_NOUNS:
        assert sp.encode(word, out_type=str) == ["▁" + word], word
    assert sp.encode("학교에서", out_type=str)[0] == "▁학교"


def test_corpus_expansion_adds_exactly_the_requested_number(spm_model_path, expanded):
    summary = json.loads((expanded["corpus"] / "expansion.json").read_text())
    assert summary["new_pieces"] == 400 and summary["characters"] > 0  # corpus characters first, then merges
    assert sp_of(expanded["corpus"] / "tokenizer.model").get_piece_size() == sp_of(spm_model_path).get_piece_size() + 400


@pytest.mark.parametrize("kind", ["base", "wordpiece", "corpus"])
def test_round_trip_exact_on_mixed_text(spm_model_path, expanded, kind):
    path = spm_model_path if kind == "base" else expanded[kind] / "tokenizer.model"
    sp, tok = sp_of(path), load_tokenizer(path)
    for text in MIXED:
        assert sp.decode(sp.encode(text)) == text
        assert tok.decode(tok.encode(text, bos=True, eos=True), skip_special=True) == text


def test_report_tokens_per_char_fall(spm_model_path, expanded, corpora, tmp_path, capsys):
    out = tmp_path / "report.json"
    tokenizer_main(["report", "--base", str(spm_model_path), "--expanded", str(expanded["corpus"]),
                    "--text", f"ko={corpora['ko_heldout']}", "--text", f"zh={corpora['zh_heldout']}",
                    "--out", str(out)])
    assert "tok/char" in capsys.readouterr().out
    report = json.loads(out.read_text())
    base, new = sp_of(spm_model_path), sp_of(expanded["corpus"] / "tokenizer.model")
    for lang in ("ko", "zh"):
        lines = corpora[f"{lang}_heldout"].read_text(encoding="utf-8").splitlines()
        chars = sum(len("".join(line.split())) for line in lines)
        r = report["languages"][lang]
        assert r["chars"] == chars
        assert r["before"]["tokens"] == sum(len(base.encode(line)) for line in lines)
        ids = [i for line in lines for i in new.encode(line)]
        assert r["after"]["tokens"] == len(ids)
        assert r["after"]["new_token_share"] == sum(i >= base.get_piece_size() for i in ids) / len(ids)
        assert r["after"]["tokens_per_char"] < 0.6 * r["before"]["tokens_per_char"], lang
        assert r["after"]["new_pieces_used"] == len({i for i in ids if i >= base.get_piece_size()}) > 0


def test_wordlist_expansion_lowers_korean_tokens_per_char(spm_model_path, expanded, corpora):
    lines = corpora["ko_heldout"].read_text(encoding="utf-8").splitlines()
    base, new = sp_of(spm_model_path), sp_of(expanded["wordpiece"] / "tokenizer.model")
    assert sum(len(new.encode(t)) for t in lines) < 0.6 * sum(len(base.encode(t)) for t in lines)


@pytest.mark.parametrize("kind", ["wordpiece", "corpus"])
def test_transformers_tokenizer_matches_sentencepiece(expanded, corpora, kind):
    sp = sp_of(expanded[kind] / "tokenizer.model")
    n = sp.get_piece_size()
    hf = transformers.AutoTokenizer.from_pretrained(expanded[kind])
    assert isinstance(hf, transformers.LlamaTokenizer)
    assert hf.convert_tokens_to_ids(["<image>", "<pad>"]) == [n, n + 1] and hf.pad_token_id == n + 1
    assert len(hf) == n + 2
    texts = MIXED + corpora["ko_heldout"].read_text(encoding="utf-8").splitlines()[:40] + \
        corpora["zh_heldout"].read_text(encoding="utf-8").splitlines()[:40] + ENGLISH[:20]
    for text in texts:
        ids = hf(text).input_ids
        assert ids == [sp.bos_id()] + sp.encode(text), text
        assert hf.decode(ids, skip_special_tokens=True) == text
    ours = load_tokenizer(expanded[kind])
    for text in ["<image>\n학교에서 무엇을 봅니까?", "USER: <image>\n描述图片 ASSISTANT: 고양이<pad><pad>"]:
        assert ours.encode(text, bos=True) == hf(text).input_ids, text


def test_legacy_flag_is_written_and_honoured(expanded, tmp_path):
    out = write_hf_tokenizer(expanded["wordpiece"] / "tokenizer.model", tmp_path / "legacy", legacy=True)
    assert json.loads((out / "tokenizer_config.json").read_text())["legacy"] is True
    hf, ours = transformers.AutoTokenizer.from_pretrained(out), load_tokenizer(out)
    for text in ["<image>\n학교에서 공부합니다", "<image>\n学生 USER: 고양이"]:
        assert ours.encode(text, bos=True) == hf(text).input_ids


def test_unigram_base(tmp_path, corpora):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(generate_multilingual_text(1500)), model_writer=model, vocab_size=500,
        model_type="unigram", character_coverage=1.0, byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        normalization_rule_name="identity", remove_extra_whitespaces=False, num_threads=1, minloglevel=2)
    (tmp_path / "uni.model").write_bytes(model.getvalue())
    stats = expand.expand_tokenizer(tmp_path / "uni.model", tmp_path / "out", add_vocab=corpora["vocab"])
    assert stats.model_type == "unigram" and stats.added > 100 and stats.support == 0
    assert not (tmp_path / "out" / "tokenizer.json").exists()  # transformers' LlamaTokenizer is BPE only
    base, new = sp_of(tmp_path / "uni.model"), sp_of(tmp_path / "out" / "tokenizer.model")
    assert [new.id_to_piece(i) for i in range(base.get_piece_size())] == \
           [base.id_to_piece(i) for i in range(base.get_piece_size())]
    for word in vocab_text.KO_NOUNS:
        assert new.encode(word, out_type=str) == ["▁" + word], word
    for text in MIXED:
        assert new.decode(new.encode(text)) == text
    assert [new.encode(t) for t in ENGLISH] == [base.encode(t) for t in ENGLISH]
    with pytest.raises(ValueError, match="BPE"):
        write_hf_tokenizer(tmp_path / "uni.model", tmp_path / "hf")


def test_errors_name_the_bad_input(tmp_path, spm_model_path):
    (tmp_path / "junk.model").write_bytes(b"\xff\x00 not a model")
    with pytest.raises(ValueError, match="junk.model"):
        expand.read_model_proto(tmp_path / "junk.model")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        expand.expand_tokenizer(spm_model_path, tmp_path / "o", add_vocab=tmp_path / "missing.txt")
    assert tokenizer_main(["expand", "--base", str(spm_model_path), "--train-corpus", str(spm_model_path),
                           "--out", str(tmp_path / "o")]) == 2  # --new-pieces missing: one error line


def test_new_bpe_scores_stay_distinct_below_huge_negative_scores(spm_model_path, tmp_path):
    proto = expand.read_model_proto(spm_model_path)
    proto.pieces[261].score = -1e9  # LLaMA scores its whitespace pieces -1e9, where float32 steps are 64
    new, _ = expand.append_pieces(proto, ["▁학교", "▁도서관", "▁컴퓨터"])
    (tmp_path / "t.model").write_bytes(new.SerializeToString())
    sp = sp_of(tmp_path / "t.model")
    scores = [sp.get_score(i) for i in range(len(proto.pieces), sp.get_piece_size())]
    assert scores[0] < -1e9 and all(a > b for a, b in zip(scores, scores[1:]))
    assert sp.encode("도서관", out_type=str) == ["▁도서관"]
    write_hf_tokenizer(tmp_path / "t.model", tmp_path / "hf")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in MIXED:
        assert hf(text).input_ids == [1] + sp.encode(text)


def test_corpus_characters_above_the_floor_are_kept_beyond_the_limit(tmp_path):
    """A small new-piece limit used to drop the single characters a corpus needs (CJK punctuation fell back to
    bytes); every character seen min_char_count times is kept, and the report flags a byte-fallback rise."""
    from xllava_jax.demo import train_tokenizer
    from xllava_jax.tokenizer.report import byte_fallback_rise, format_report, tokenizer_report
    base = train_tokenizer(ENGLISH * 3, tmp_path / "en" / "tokenizer.model", 600)
    zh = vocab_text.write_text(tmp_path / "zh.txt", vocab_text.generate("zh", 400, 7))
    lines = zh.read_text(encoding="utf-8").splitlines()
    assert any("。" in line for line in lines) and any("？" in line for line in lines)
    shares = {}
    for floor in (0, 5):
        out = tmp_path / f"floor{floor}"
        stats = expand.expand_tokenizer(base, out, train_corpus=zh, new_pieces=300, min_char_count=floor,
                                        num_threads=1)
        sp = sp_of(out / "tokenizer.model")
        ids = [i for line in lines for i in sp.encode(line)]
        shares[floor] = sum(map(sp.is_byte, ids)) / len(ids)
        assert stats.characters == (0 if floor == 0 else len(expand.corpus_characters(zh, 5)))
        assert stats.new_pieces == 300
    assert shares[0] > 0.1 and shares[5] == 0.0
    assert sp_of(tmp_path / "floor5" / "tokenizer.model").encode("。？", out_type=str) == ["▁", "。", "？"]
    report = tokenizer_report(base, tmp_path / "floor5" / "tokenizer.model", {"zh": zh})
    assert report["byte_fallback_rise"] == [] and "WARNING" not in format_report(report)
    report["languages"]["zh"]["after"]["byte_fallback_share"] = 1.0  # as if the expansion lost characters
    assert byte_fallback_rise(report) == ["zh"] and "WARNING zh: byte-fallback share rose" in format_report(report)


def test_expand_writes_the_base_legacy_flag(expanded, corpora, tmp_path):
    """A bare tokenizer.model base gives a legacy tokenizer (SentencePiece's own ids after </s>); an HF directory
    base passes its own flag on."""
    assert json.loads((expanded["wordpiece"] / "tokenizer_config.json").read_text())["legacy"] is True
    assert load_tokenizer(expanded["wordpiece"]).legacy
    base = write_hf_tokenizer(expanded["wordpiece"] / "tokenizer.model", tmp_path / "base", legacy=False)
    tokenizer_main(["expand", "--base", str(base), "--add-vocab", str(corpora["vocab"]), "--out", str(tmp_path / "o")])
    assert json.loads((tmp_path / "o" / "tokenizer_config.json").read_text())["legacy"] is False
