"""Renders chat messages into the single prompt string a Cortensor router takes."""

from __future__ import annotations

from gateway.translate.common import ChatMessage

PROMPT_FORMATS = ("chatml", "plain")

_PLAIN_LABELS = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}


def _role(role: str) -> str:
    # OpenAI's `developer` role is its newer name for `system`; models were trained on the latter.
    return "system" if role == "developer" else role


def render_prompt(messages: list[ChatMessage], fmt: str, system: str | None = None) -> str:
    """The prompt for `fmt` ("chatml" or "plain"); `system` (Anthropic's top-level field) comes first when non-empty."""
    if fmt == "chatml":
        parts = [f"<|im_start|>system\n{system}<|im_end|>\n"] if system else []
        parts.extend(f"<|im_start|>{_role(m.role)}\n{m.content}<|im_end|>\n" for m in messages)
        parts.append("<|im_start|>assistant\n")
        return "".join(parts)
    if fmt == "plain":
        lines = [f"System: {system}"] if system else []
        lines.extend(f"{_PLAIN_LABELS.get(m.role) or m.role.capitalize()}: {m.content}" for m in messages)
        lines.append("Assistant:")
        return "\n".join(lines)
    raise ValueError(f"unknown prompt format {fmt!r}; expected one of {', '.join(PROMPT_FORMATS)}")
