"""Prompt rendering: exact chatml and plain strings."""

from __future__ import annotations

import pytest

from gateway.translate.common import ChatMessage
from gateway.translate.prompt import render_prompt

CONVERSATION = [
    ChatMessage("system", "Be brief."),
    ChatMessage("user", "Hi"),
    ChatMessage("assistant", "Hello!"),
    ChatMessage("user", "Two\nlines"),
]


def test_chatml_renders_every_message_and_opens_the_assistant_turn() -> None:
    assert render_prompt(CONVERSATION, "chatml") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nTwo\nlines<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chatml_puts_the_top_level_system_first() -> None:
    assert render_prompt([ChatMessage("user", "Hi")], "chatml", system="You are terse.") == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_developer_role_renders_as_system() -> None:
    messages = [ChatMessage("developer", "Rules."), ChatMessage("user", "Hi")]
    assert render_prompt(messages, "chatml") == (
        "<|im_start|>system\nRules.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_prompt(messages, "plain") == "System: Rules.\nUser: Hi\nAssistant:"


def test_plain_renders_labelled_lines_ending_with_the_assistant_label() -> None:
    assert render_prompt(CONVERSATION, "plain") == (
        "System: Be brief.\nUser: Hi\nAssistant: Hello!\nUser: Two\nlines\nAssistant:"
    )


def test_plain_puts_the_top_level_system_first() -> None:
    assert render_prompt([ChatMessage("user", "Hi")], "plain", system="Sys") == "System: Sys\nUser: Hi\nAssistant:"


def test_empty_system_is_left_out() -> None:
    assert render_prompt([ChatMessage("user", "Hi")], "plain", system="") == "User: Hi\nAssistant:"
    assert render_prompt([ChatMessage("user", "Hi")], "chatml", system="") == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_unknown_format_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="llama3"):
        render_prompt([ChatMessage("user", "Hi")], "llama3")
