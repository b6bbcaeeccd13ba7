"""Bad-input accounting: the DataError raised in strict mode, and DataStats counting skips/truncations/drops."""

from __future__ import annotations

import collections
import dataclasses
import logging

from xllava_jax.cli import UserError

log = logging.getLogger("xllava_jax.data")

# Reasons a record is skipped (bad input) or a sample dropped/changed (sequence limits).
MALFORMED_JSON = "malformed_json"
MISSING_FIELD = "missing_field"
NOT_ALTERNATING = "turns_not_alternating"
EMPTY_ANSWER = "empty_answer"
MISSING_IMAGE = "missing_image"
CORRUPT_IMAGE = "corrupt_image"
MISSING_LANGUAGE = "missing_language"
NO_TRAINED_TOKENS = "no_trained_tokens"
IMAGE_RUN_CUT = "image_run_cut_by_truncation"
TOO_MANY_IMAGES = "too_many_images_for_row"
LOGGED_PER_REASON = 5  # skips logged one by one per reason; later ones every thousandth


class DataError(UserError, ValueError):
    """A bad record or setting; the message names the record id or the setting."""


@dataclasses.dataclass
class DataStats:
    """Counters of what the data path did: samples kept, skipped (by reason), truncated, languages, lengths."""

    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict = dataclasses.field(default_factory=dict)  # reason -> first few record ids
    kept: int = 0
    truncated: int = 0
    languages: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    tokens: int = 0  # tokens of the kept samples
    tokens_cut: int = 0  # tokens removed by truncation from kept samples

    def skip(self, record_id: str, reason: str, detail: str = "", strict: bool = False) -> None:
        """Count and log a skipped record (or raise DataError naming it when `strict`)."""
        msg = f"record {record_id!r}: {reason}" + (f" ({detail})" if detail else "")
        if strict:
            raise DataError(msg)
        self.skipped[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(record_id)
        count = self.skipped[reason]
        if count <= LOGGED_PER_REASON or count % 1000 == 0:  # the first few, then every thousandth
            log.warning("skipping %s%s", msg, f" [{count} skipped for {reason} so far]" if count > 1 else "")

    def count(self, example: dict) -> None:
        """Count one kept sample (or piece of a split document)."""
        self.kept += 1
        self.truncated += int(bool(example.get("truncated")))
        self.tokens += len(example["input_ids"])
        self.tokens_cut += int(example.get("tokens_cut", 0))
        if example.get("lang"):
            self.languages[example["lang"]] += 1

    def merge(self, other: "DataStats") -> "DataStats":
        """Add `other`'s counts into this one and return self."""
        self.skipped.update(other.skipped)
        for k, v in other.examples.items():
            self.examples.setdefault(k, []).extend(v[: max(0, 5 - len(self.examples.get(k, [])))])
        self.kept += other.kept
        self.truncated += other.truncated
        self.languages.update(other.languages)
        self.tokens += other.tokens
        self.tokens_cut += other.tokens_cut
        return self

    def to_dict(self) -> dict:
        """JSON-able form (also the iterator-state form)."""
        return {"kept": self.kept, "truncated": self.truncated, "skipped": dict(self.skipped),
                "examples": {k: list(v) for k, v in self.examples.items()}, "languages": dict(self.languages),
                "tokens": self.tokens, "tokens_cut": self.tokens_cut}

    @classmethod
    def from_dict(cls, d: dict) -> "DataStats":
        """Inverse of to_dict."""
        return cls(collections.Counter(d.get("skipped", {})), {k: list(v) for k, v in d.get("examples", {}).items()},
                   d.get("kept", 0), d.get("truncated", 0), collections.Counter(d.get("languages", {})),
                   d.get("tokens", 0), d.get("tokens_cut", 0))

    def one_line(self) -> str:
        """kept, truncated and skipped counts (by reason) on one line (the end-of-training log line)."""
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(self.skipped.items()))
        return (f"kept={self.kept} truncated={self.truncated} skipped={sum(self.skipped.values())}"
                + (f" ({reasons})" if reasons else ""))

    def summary(self, title: str = "data") -> str:
        """A human-readable multi-line summary."""
        lines = [f"[{title}] kept={self.kept} truncated={self.truncated} skipped={sum(self.skipped.values())} "
                 f"tokens kept={self.tokens} cut={self.tokens_cut}"]
        for reason, n in sorted(self.skipped.items()):
            lines.append(f"  skipped {reason}: {n} (e.g. {', '.join(map(str, self.examples.get(reason, [])))})")
        if self.languages:
            lines.append("  languages: " + ", ".join(f"{k}={v}" for k, v in sorted(self.languages.items())))
        return "\n".join(lines)
