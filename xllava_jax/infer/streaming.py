"""Generated ids -> text, incrementally: stop strings, and deltas safe to print as they come."""

from __future__ import annotations

from typing import Protocol, Sequence

REPLACEMENT = "\ufffd"  # what a decoder shows for the incomplete bytes of a character still being generated


class Decoder(Protocol):
    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str: ...


def find_stop(text: str, stop_strings: Sequence[str]) -> int | None:
    """Index where the earliest stop string begins in `text`, or None."""
    hits = [i for i in (text.find(s) for s in stop_strings if s) if i >= 0]
    return min(hits) if hits else None


def held_back(text: str, stop_strings: Sequence[str]) -> int:
    """How many trailing characters to hold back: a possible stop-string prefix or an unfinished character."""
    hold = 0
    for s in stop_strings:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    if text.endswith(REPLACEMENT):
        hold = max(hold, len(text) - len(text.rstrip(REPLACEMENT)))
    return hold


class TextStream:
    """Text of one row's generated ids: `update(ids)` returns the new printable text, `stopped` once a
    stop string appears (the text is cut before it)."""

    def __init__(self, tokenizer: Decoder, stop_strings: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop_strings = tuple(stop_strings)
        self.text = ""  # final text so far (cut at a stop string)
        self.emitted = 0  # characters of text already returned by update
        self.stopped = False
        self.num_tokens = 0  # ids consumed when the stream stopped (or so far)

    def update(self, ids: Sequence[int], final: bool = False) -> str:
        """Feed all generated ids so far; returns the text that became safe to show."""
        if self.stopped:
            return ""
        text = self.tokenizer.decode(list(ids), skip_special=True)
        self.num_tokens = len(ids)
        cut = find_stop(text, self.stop_strings)
        if cut is not None:
            text, self.stopped, final = text[:cut], True, True
        self.text = text
        end = len(text) if final else len(text) - held_back(text, self.stop_strings)
        delta = text[self.emitted:max(end, self.emitted)]
        self.emitted = max(end, self.emitted)
        return delta
