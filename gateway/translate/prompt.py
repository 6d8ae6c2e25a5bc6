"""Renders chat messages into the single prompt string a Cortensor router takes.

No message text can start, end or forge a turn: the role-control sequences of each format are
neutralized in every text that goes into the prompt (message contents, the system and developer
texts, Anthropic's `system`) by putting a ZERO WIDTH SPACE (U+200B) into them. The text reads the
same, but no tokenizer sees a control token in it and no line of it starts a turn:

- any special-token-shaped sequence `<|name|>` (ChatML's `<|im_start|>` and `<|im_end|>`,
  `<|endoftext|>`, other templates' `<|eot_id|>`, `<|channel|>`..., and the fullwidth-bar form
  `<｜name｜>`) gets one after its `<` and one before its `>`, in both formats (plain-format models
  have such tokens too);
- in the plain format, a line that begins (after optional whitespace) with one of the format's role
  headers (`System:`, `User:`, `Assistant:`, any case, spaces allowed before the colon) gets the
  zero-width space before the header word. Any line break `str.splitlines` knows ends a line.
"""

from __future__ import annotations

import re

from gateway.translate.common import ChatMessage

PROMPT_FORMATS = ("chatml", "plain")

_PLAIN_LABELS = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}

NEUTRALIZER = "\u200b"  # ZERO WIDTH SPACE: not whitespace to a tokenizer or to `\s`, so what it splits stays split

# A name without spaces or brackets between `<|` and `|>` (or the fullwidth bar `｜` some tokenizers use).
_SPECIAL_TOKEN = re.compile(r"<([|｜])([^\s<>|｜]*)([|｜])>")
_LINE_BREAKS = r"\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # where str.splitlines ends a line
_HEADER = rf"((?i:{'|'.join(sorted(set(_PLAIN_LABELS.values())))}))(?=[^\S{_LINE_BREAKS}]*:)"
# Two patterns rather than one with a look-behind, and case folded only for the header word: a pattern that
# begins with a (case-sensitive) line break lets the regex engine skip in C to the few places a header can start.
_PLAIN_HEADER_FIRST = re.compile(rf"(\s*){_HEADER}")
_PLAIN_HEADER_AFTER_BREAK = re.compile(rf"([{_LINE_BREAKS}]\s*){_HEADER}")


def _role(role: str) -> str:
    # OpenAI's `developer` role is its newer name for `system`; models were trained on the latter.
    return "system" if role == "developer" else role


def _no_tokens(text: str) -> str:
    if "<|" not in text and "<｜" not in text:  # the common case, settled in C
        return text
    return _SPECIAL_TOKEN.sub(rf"<{NEUTRALIZER}\1\2\3{NEUTRALIZER}>", text)


# One of these is in the case-folded text wherever the header pattern can match: the regex engine's case folding
# also takes 'ſ' for 's' (so does casefold) and 'ı', 'İ' for 'i' (casefold does not; 'stant' holds no 'i').
_HEADER_HINTS = ("system", "user", "stant")


def _no_plain_turns(text: str) -> str:
    text = _no_tokens(text)
    if ":" not in text:
        return text
    folded = text.casefold()
    if not any(hint in folded for hint in _HEADER_HINTS):  # most text, settled in C
        return text
    text = _PLAIN_HEADER_AFTER_BREAK.sub(rf"\1{NEUTRALIZER}\2", text)
    first = _PLAIN_HEADER_FIRST.match(text)
    if first is not None:
        text = f"{text[: first.end(1)]}{NEUTRALIZER}{text[first.end(1) :]}"
    return text


def render_prompt(messages: list[ChatMessage], fmt: str, system: str | None = None) -> str:
    """The prompt for `fmt` ("chatml" or "plain"); `system` (Anthropic's top-level field) comes first when non-empty."""
    if fmt == "chatml":
        parts = [f"<|im_start|>system\n{_no_tokens(system)}<|im_end|>\n"] if system else []
        parts.extend(f"<|im_start|>{_role(m.role)}\n{_no_tokens(m.content)}<|im_end|>\n" for m in messages)
        parts.append("<|im_start|>assistant\n")
        return "".join(parts)
    if fmt == "plain":
        lines = [f"System: {_no_plain_turns(system)}"] if system else []
        lines.extend(f"{_PLAIN_LABELS.get(m.role) or m.role.capitalize()}: {_no_plain_turns(m.content)}" for m in messages)
        lines.append("Assistant:")
        return "\n".join(lines)
    raise ValueError(f"unknown prompt format {fmt!r}; expected one of {', '.join(PROMPT_FORMATS)}")
