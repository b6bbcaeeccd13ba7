"""Translation of LLaVA datasets and LLaVA question files into target languages, and translator agreement.

Input kinds:
  ``llava``      ``{"id", "image", "conversations": [{"from", "value": str}]}`` (JSON list or JSONL)
  ``questions``  LLaVA question JSONL ``{"question_id", "image", "text", ...}`` (fields chosen by ``fields``)
Output is JSONL in the parallel multilingual format: each translated string becomes
``{src: original, tgt1: ..., ...}``; ``export_language`` writes one plain file per language.

``<image>`` is never sent to the translator (texts are split around it and re-joined);
after translation, option letters at line starts (``A.``/``B)``) and digit sequences must
match the source, otherwise the record is rejected with a reason. Records are batched
(several texts per request, one request per target language) and the output is resumable
by record id, like mvif. Any object with ``translate(texts, src, tgt) -> list[str]`` is a
translator; ``ApiTranslator`` uses the shared chat client.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import json
import os
import re
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

from tqdm import tqdm

from xllava_jax.datagen.languages import lang_name
from xllava_jax.datagen.parse import IMAGE_TOKEN
from xllava_jax.openai_api import RejectError, extract_json
from xllava_jax.jsonl import JsonlWriter, read_jsonl
from xllava_jax.openai_api import ApiError, BudgetExceeded, ChatClient, run_concurrently, text_message

KINDS = ("llava", "questions")
RETRYABLE_REJECTS = frozenset({"request_failed"})
BLEU_TOKENIZE = {"zh": "zh", "ja": "char", "th": "char"}  # sacrebleu tokenizer per target language
_OPTION = re.compile(r"(?m)^\s*([A-Z])[.)]")
_DIGITS = re.compile(r"\d+")

TRANSLATE_SYSTEM = (
    "You are a professional translator for vision-language datasets. Translate faithfully and naturally. "
    "Keep every number as digits, keep option letters such as 'A.' and 'B.' at the start of lines unchanged, "
    "keep line breaks, and do not add explanations."
)


class Translator(Protocol):
    """Anything that translates a batch of strings."""

    def translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]:
        """Translations of ``texts`` from ``src`` to ``tgt``, same length and order."""


class ApiTranslator:
    """Translator that sends one JSON array per request through the shared chat client."""

    def __init__(self, client: ChatClient):
        self.client = client

    def translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]:
        """One request per call; the reply must be a JSON array of len(texts) strings."""
        prompt = (f"Translate each string in this JSON array from {lang_name(src)} into {lang_name(tgt)}. "
                  f"Reply with only a JSON array of exactly {len(texts)} translated strings, in order.\n"
                  + json.dumps(list(texts), ensure_ascii=False))
        result = self.client.complete([text_message("system", TRANSLATE_SYSTEM), text_message("user", prompt)])
        try:
            if result.finish_reason == "length":
                raise RejectError("truncated", "translation reply stopped at max_tokens")
            out = extract_json(result.text)
            if not isinstance(out, list) or len(out) != len(texts) or not all(isinstance(t, str) for t in out):
                raise RejectError("bad_translation_reply", f"expected a JSON array of {len(texts)} strings")
        except RejectError:
            self.client.forget(result)  # a retry of this request must get a new reply (it was paid for all the same)
            raise
        return out


def load_translator(spec: str, client: ChatClient | None) -> Translator:
    """``api`` -> ApiTranslator(client); ``pkg.module:factory`` -> factory() (a pluggable translator)."""
    if spec == "api":
        if client is None:
            raise ValueError("translator 'api' needs an API client")
        return ApiTranslator(client)
    module, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"translator {spec!r}: expected 'api' or 'package.module:factory'")
    return getattr(importlib.import_module(module), attr)()


# -- texts in and out of records ----------------------------------------------------------
def record_key(record: Mapping[str, Any], kind: str) -> str:
    """The resume key of a record: ``id`` (llava) or ``question_id`` (questions)."""
    key = record.get("id" if kind == "llava" else "question_id")
    if key is None:
        raise ValueError(f"{kind} record has no {'id' if kind == 'llava' else 'question_id'}: {str(record)[:120]}")
    return str(key)


def translatable_values(record: Mapping[str, Any], kind: str, fields: Sequence[str]) -> list[Any]:
    """The values of a record that get translated (strings, or {lang: text} dicts)."""
    if kind == "llava":
        return [t["value"] for t in record["conversations"]]
    return [record[f] for f in fields if f in record]


def source_texts(record: Mapping[str, Any], kind: str, fields: Sequence[str], src: str) -> list[str]:
    """The strings of a record to translate (a dict value contributes its ``src`` entry)."""
    values = translatable_values(record, kind, fields)
    return [v[src] if isinstance(v, Mapping) else v for v in values]


def with_translations(record: Mapping[str, Any], kind: str, fields: Sequence[str], src: str,
                      translated: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The parallel record: each translated string becomes {src: original, lang: translation, ...}."""
    out = json.loads(json.dumps(record))
    values = translatable_values(record, kind, fields)
    merged = [{**(v if isinstance(v, Mapping) else {src: v}), **{lang: texts[i] for lang, texts in translated.items()}}
              for i, v in enumerate(values)]
    if kind == "llava":
        for turn, value in zip(out["conversations"], merged):
            turn["value"] = value
    else:
        for f, value in zip([f for f in fields if f in record], merged):
            out[f] = value
    return out


# -- protecting <image>, checking letters and numbers ----------------------------------------
def split_protected(text: str) -> list[str]:
    """Pieces of text between ``<image>`` tokens (re-join with the token)."""
    return text.split(IMAGE_TOKEN)


def _core(piece: str) -> tuple[str, str, str]:
    """(leading whitespace, content, trailing whitespace) of a piece."""
    core = piece.strip()
    if not core:
        return piece, "", ""
    start = piece.index(core)
    return piece[:start], core, piece[start + len(core):]


def preservation_problem(src: str, tgt: str) -> str | None:
    """Why a translation broke protected content (``<image>``, option letters, numbers), or None."""
    if src.count(IMAGE_TOKEN) != tgt.count(IMAGE_TOKEN):
        return "image_token_changed"
    if _OPTION.findall(src) != _OPTION.findall(tgt):
        return "options_changed"
    if sorted(_DIGITS.findall(src.replace(",", ""))) != sorted(_DIGITS.findall(tgt.replace(",", ""))):
        return "numbers_changed"
    return None


def translate_texts(translator: Translator, texts: Sequence[str], src: str, tgt: str) -> list[str]:
    """Translate whole texts in one batch, keeping ``<image>`` and surrounding whitespace in place."""
    pieces = [[_core(p) for p in split_protected(t)] for t in texts]
    cores = [c for ps in pieces for (_, c, _) in ps if c]
    done = iter(translator.translate(cores, src, tgt) if cores else [])
    return [IMAGE_TOKEN.join(lead + (next(done) if core else "") + trail for lead, core, trail in ps)
            for ps in pieces]


# -- the run ---------------------------------------------------------------------------------
@dataclasses.dataclass
class TranslateConfig:
    """One translation run."""

    input: str
    out: str
    kind: str = "llava"
    src: str = "en"
    langs: tuple[str, ...] = ("ko", "zh")
    fields: tuple[str, ...] = ("text",)
    batch_texts: int = 16
    retry_rejects: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.src in self.langs:
            raise ValueError(f"source language {self.src!r} is also a target in {self.langs}")

    @property
    def rejects_path(self) -> str:
        """Where rejected records go."""
        return self.out + ".rejects.jsonl"


def load_records(path: str) -> list[dict[str, Any]]:
    """A JSON list or JSONL file of records."""
    with open(path, encoding="utf-8") as f:
        head = f.read(1)
        while head and head.isspace():
            head = f.read(1)
    if head == "[":
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return list(read_jsonl(path))


def chunk_records(records: Sequence[Mapping[str, Any]], sizes: Sequence[int], batch_texts: int) -> Iterator[list]:
    """Consecutive groups of records with at most ``batch_texts`` texts (a bigger record goes alone)."""
    chunk: list = []
    count = 0
    for rec, n in zip(records, sizes):
        if chunk and count + n > batch_texts:
            yield chunk
            chunk, count = [], 0
        chunk.append(rec)
        count += n
    if chunk:
        yield chunk


def translate_language(texts: Sequence[Sequence[str]], translator: Translator, src: str,
                       lang: str) -> list[list[str] | RejectError]:
    """Each record's texts in `lang`: one batch for the chunk; if that reply is rejected, record by record (only
    for this language: the other languages' replies are kept). A record that still fails gets its RejectError."""
    flat = [t for ts in texts for t in ts]
    try:
        done = translate_texts(translator, flat, src, lang)
    except RejectError as e:
        if len(texts) == 1:
            return [e]
        return [translate_language([ts], translator, src, lang)[0] for ts in texts]
    out, pos = [], 0
    for ts in texts:
        out.append(done[pos:pos + len(ts)])
        pos += len(ts)
    return out


def translate_chunk(chunk: Sequence[Mapping[str, Any]], translator: Translator,
                    cfg: TranslateConfig) -> list[dict[str, Any]]:
    """Outcomes ({"record"} or {"reject"}) for a chunk; a failed batch is retried record by record per language."""
    texts = [source_texts(r, cfg.kind, cfg.fields, cfg.src) for r in chunk]
    by_lang = {lang: translate_language(texts, translator, cfg.src, lang) for lang in cfg.langs}
    outcomes = []
    for j, (rec, ts) in enumerate(zip(chunk, texts)):
        key = record_key(rec, cfg.kind)
        failed = next(((lang, by_lang[lang][j]) for lang in cfg.langs if isinstance(by_lang[lang][j], RejectError)),
                      None)
        if failed:
            lang, e = failed
            outcomes.append({"reject": {"id": key, "reason": e.reason, "detail": f"{lang}: {e.detail}"}})
            continue
        per_lang = {lang: by_lang[lang][j] for lang in cfg.langs}
        problem = next(((lang, i, p) for lang in cfg.langs for i, t in enumerate(ts)
                        if (p := preservation_problem(t, per_lang[lang][i]))), None)
        if problem:
            lang, i, reason = problem
            outcomes.append({"reject": {"id": key, "reason": reason, "detail": f"{lang} text {i}: {per_lang[lang][i][:200]!r}"}})
        else:
            outcomes.append({"record": with_translations(rec, cfg.kind, cfg.fields, cfg.src, per_lang)})
    return outcomes


def run_translate(cfg: TranslateConfig, translator: Translator, client: ChatClient | None = None,
                  concurrency: int = 4) -> dict[str, Any]:
    """Translate every record not yet done; resumable; returns a summary dict."""
    records = load_records(cfg.input)
    done = {record_key(r, cfg.kind) for r in read_jsonl(cfg.out)}
    if not cfg.retry_rejects:
        done |= {r["id"] for r in read_jsonl(cfg.rejects_path) if r.get("reason") not in RETRYABLE_REJECTS}
    todo = [r for r in records if record_key(r, cfg.kind) not in done]
    sizes = [len(source_texts(r, cfg.kind, cfg.fields, cfg.src)) for r in todo]
    chunks = list(chunk_records(todo, sizes, cfg.batch_texts))
    rejected: collections.Counter[str] = collections.Counter()
    written = 0
    stop: Callable[[], bool] = (lambda: not client.budget_left()) if client else (lambda: False)
    with JsonlWriter(cfg.out) as out, JsonlWriter(cfg.rejects_path) as rej, \
            tqdm(total=len(todo), desc="translate", unit="record", disable=not cfg.progress) as bar:
        work = lambda ch: translate_chunk(ch, translator, cfg)  # noqa: E731
        for chunk, outcomes, err in run_concurrently(work, chunks, concurrency, stop=stop):
            if isinstance(err, BudgetExceeded):
                continue
            if isinstance(err, ApiError):
                outcomes = [{"reject": {"id": record_key(r, cfg.kind), "reason": "request_failed", "detail": str(err)}}
                            for r in chunk]
            elif err is not None:
                raise err
            for o in outcomes:
                if "record" in o:
                    out.write(o["record"])
                    written += 1
                else:
                    rej.write(o["reject"])
                    rejected[o["reject"]["reason"]] += 1
            bar.update(len(chunk))
    ids = [record_key(r, cfg.kind) for r in read_jsonl(cfg.out)]
    return {"records": len(records), "skipped_done": len(records) - len(todo), "written": written,
            "rejects": dict(rejected), "incomplete": len(todo) - written - sum(rejected.values()),
            "duplicates": len(ids) - len(set(ids)), "api": client.stats.as_dict() if client else None}


# -- per-language export and agreement --------------------------------------------------------
def language_view(record: Mapping[str, Any], lang: str) -> dict[str, Any]:
    """A parallel record with every {lang: text} value replaced by its ``lang`` text (plain LLaVA)."""
    def pick(v: Any) -> Any:
        if isinstance(v, Mapping) and lang in v and all(isinstance(x, str) for x in v.values()):
            return v[lang]
        if isinstance(v, Mapping):
            return {k: pick(x) for k, x in v.items()}
        if isinstance(v, list):
            return [pick(x) for x in v]
        return v
    return {**pick(dict(record)), "lang": lang}


def export_language(parallel_path: str, lang: str, out_path: str) -> int:
    """Write one language's plain LLaVA/question file from a parallel file; returns the count."""
    n = 0
    with open(out_path + ".tmp", "w", encoding="utf-8") as f:
        for rec in read_jsonl(parallel_path):
            f.write(json.dumps(language_view(rec, lang), ensure_ascii=False) + "\n")
            n += 1
    os.replace(out_path + ".tmp", out_path)
    return n


def parallel_texts(record: Mapping[str, Any], lang: str) -> list[str]:
    """All ``lang`` strings of a parallel record, in document order."""
    found: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, Mapping) and lang in v and isinstance(v[lang], str):
            found.append(v[lang])
        elif isinstance(v, Mapping):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
    walk(record)
    return found


def agreement_bleu(path_a: str, path_b: str, langs: Sequence[str], kind: str = "llava") -> dict[str, Any]:
    """sacrebleu corpus BLEU per language of translator A's output against translator B's, on shared ids."""
    import sacrebleu

    a = {record_key(r, kind): r for r in read_jsonl(path_a)}
    b = {record_key(r, kind): r for r in read_jsonl(path_b)}
    shared = sorted(set(a) & set(b))
    scores: dict[str, Any] = {"shared_records": len(shared)}
    for lang in langs:
        hyp, ref = [], []
        for key in shared:
            ta, tb = parallel_texts(a[key], lang), parallel_texts(b[key], lang)
            if len(ta) == len(tb):
                hyp += ta
                ref += tb
        bleu = sacrebleu.corpus_bleu(hyp, [ref], tokenize=BLEU_TOKENIZE.get(lang, "13a")) if hyp else None
        scores[lang] = round(bleu.score, 2) if bleu else None
    return scores
