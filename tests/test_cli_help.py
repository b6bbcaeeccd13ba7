"""Every flag of the subcommand command lines says its default in --help, once, and truly."""

import argparse
import importlib

import pytest

PARSERS = {"infer": ("xllava_jax.infer.__main__", "build_parser"), "convert": ("xllava_jax.convert.__main__", "parser"),
           "data": ("xllava_jax.data.cli", "build_parser"), "tokenizer": ("xllava_jax.tokenizer.__main__", "parser"),
           "eval": ("xllava_jax.eval.__main__", "build_parser"), "datagen": ("xllava_jax.datagen.__main__", "build_parser")}


def subcommands(tool: str) -> dict[str, argparse.ArgumentParser]:
    """{subcommand: parser} of one tool."""
    module, fn = PARSERS[tool]
    p = getattr(importlib.import_module(module), fn)()
    return {name: sp for a in p._actions if isinstance(a, argparse._SubParsersAction) for name, sp in a.choices.items()}


@pytest.mark.parametrize("tool", sorted(PARSERS))
def test_every_default_shown_once(tool):
    problems = []
    for name, p in subcommands(tool).items():
        exclusive = {id(a) for g in p._mutually_exclusive_groups if g.required for a in g._group_actions}
        for a in p._actions:
            if a.nargs == 0 or a.required or id(a) in exclusive or a.help == argparse.SUPPRESS:
                continue  # switches, required flags, one-of-a-required-group: no default to state
            says = "default" in (a.help or "").lower()
            if a.default is None and not says:
                problems.append(f"{tool} {name} {a.option_strings[0]}: no default in its help")
            if a.default is not None and says:
                problems.append(f"{tool} {name} {a.option_strings[0]}: default {a.default!r} shown, and the help "
                                f"states another: {a.help}")
    assert not problems, "\n".join(problems)


def test_chat_streams_one_step_per_call_and_says_so():
    chat = subcommands("infer")["chat"]
    assert chat.parse_args(["--checkpoint", "c"]).steps_per_call == 1
    text = " ".join(chat.format_help().split())
    assert "(default: 1)" in text and "auto" not in text
    generate = subcommands("infer")["generate"]
    assert generate.parse_args(["--checkpoint", "c", "--questions", "q", "--out", "o"]).steps_per_call is None
    assert "default: auto" in " ".join(generate.format_help().split())
