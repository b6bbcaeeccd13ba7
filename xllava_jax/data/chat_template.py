"""Jinja chat templates (transformers' `chat_template`) that render our conversation templates.

`processor.apply_chat_template(messages, add_generation_prompt=True)` on an export renders the string
data.templates.render_string gives for the same turns, without the leading `<s>` (the tokenizer adds
BOS), with LLaVA's image placement: each image of a message as `<image>\\n` before its text.
"""

from __future__ import annotations

from xllava_jax.data.templates import LLAMA_2_SYSTEM, VICUNA_SYSTEM, get_template

# content(m): a string, or a list of {"type": "image"} / {"type": "text", "text": ...} items.
_CONTENT = (
    "{%- macro content(m) -%}"
    "{%- if m['content'] is string -%}{{ m['content'] | trim }}"
    "{%- else -%}"
    "{%- for c in m['content'] if c['type'] == 'image' -%}{{ '<image>\\n' }}{%- endfor -%}"
    "{{ m['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') | trim }}"
    "{%- endif -%}"
    "{%- endmacro -%}")
_SYSTEM = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'] | map(attribute='text') | join(' ') -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = DEFAULT -%}{%- set turns = messages -%}{%- endif -%}")

_VICUNA_V1 = _CONTENT + _SYSTEM.replace("DEFAULT", repr(VICUNA_SYSTEM)) + (
    "{%- for m in turns -%}"
    "{%- if m['role'] == 'user' -%}"
    "{%- if loop.first -%}{{ system }} {% endif -%}USER: {{ content(m) }} ASSISTANT:"
    "{%- else %} {{ content(m) }}</s>{%- endif -%}"
    "{%- endfor -%}")

_LLAVA_LLAMA_2 = _CONTENT + _SYSTEM.replace("DEFAULT", repr(LLAMA_2_SYSTEM)) + (
    "{%- for m in turns -%}"
    "{%- if m['role'] == 'user' -%}"
    "{%- if not loop.first -%}<s>{%- endif -%}"
    "[INST] {% if loop.first %}<<SYS>>\n{{ system }}\n<</SYS>>\n\n{% endif %}{{ content(m) }} [/INST]"
    "{%- else %} {{ content(m) }} </s>{%- endif -%}"
    "{%- endfor -%}")

_PLAIN = (
    "{%- for m in messages -%}"
    "{%- if loop.first -%}"
    "{%- if m['content'] is not string and m['content'] | selectattr('type', 'equalto', 'image') | list -%}"
    "<image>{%- endif -%}"
    "{%- elif m['role'] == 'assistant' -%}"
    "{{ m['content'] if m['content'] is string else m['content'] | map(attribute='text') | join('') }}{{ '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}")

CHAT_TEMPLATES = {"vicuna_v1": _VICUNA_V1, "llava_llama_2": _LLAVA_LLAMA_2, "plain": _PLAIN}


def chat_template(name: str) -> str:
    """The Jinja chat template of our conversation template `name` (ValueError if it has none)."""
    get_template(name)  # unknown names fail with the registry's message
    if name not in CHAT_TEMPLATES:
        raise ValueError(f"conversation template {name!r} has no chat_template for the HF export; "
                         f"available: {sorted(CHAT_TEMPLATES)}")
    return CHAT_TEMPLATES[name]
