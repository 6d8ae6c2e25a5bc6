"""The simulator's answers: a deterministic token sequence per prompt, chosen from a small vocabulary."""

from __future__ import annotations

import functools
import hashlib
import json
import math

MIN_NATURAL_TOKENS = 8
MAX_NATURAL_TOKENS = 40

# 32 words: a power of two, so `byte % len(VOCABULARY)` picks without bias.
VOCABULARY: tuple[str, ...] = (
    "the", "router", "answers", "with", "a", "simulated", "reply", "from",
    "miner", "nodes", "that", "stream", "tokens", "quickly", "and", "keep",
    "every", "session", "alive", "while", "tests", "check", "each", "chunk",
    "of", "text", "for", "gateway", "clients", "in", "order", "today",
)  # fmt: skip

# Tokens and their JSON encodings are precomputed so a streamed chunk is only
# byte concatenation, which keeps the simulator cheap as a benchmark upstream.
_FIRST_TOKENS: tuple[str, ...] = VOCABULARY
_NEXT_TOKENS: tuple[str, ...] = tuple(" " + word for word in VOCABULARY)
TOKEN_JSON: dict[str, bytes] = {token: json.dumps(token).encode() for token in _FIRST_TOKENS + _NEXT_TOKENS}


@functools.lru_cache(maxsize=4096)
def prompt_answer(prompt: str, max_tokens: int) -> tuple[tuple[str, ...], str]:
    """The answer to a prompt (8 to 40 tokens picked by its hash, cut at max_tokens) and its finish reason."""
    digest = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest()
    # 64 bytes of material: byte 0 picks the length, bytes 1..40 pick the words.
    material = digest + hashlib.sha256(digest).digest()
    span = MAX_NATURAL_TOKENS - MIN_NATURAL_TOKENS + 1
    natural = MIN_NATURAL_TOKENS + material[0] % span
    count = max(0, min(natural, max_tokens))
    size = len(VOCABULARY)
    tokens = tuple((_FIRST_TOKENS if i == 0 else _NEXT_TOKENS)[material[1 + i] % size] for i in range(count))
    return tokens, ("length" if count < natural else "stop")


@functools.lru_cache(maxsize=64)
def fixed_answer(count: int, max_tokens: int) -> tuple[tuple[str, ...], str]:
    """A fixed-length answer whatever the prompt (the `answer_tokens` knob) and its finish reason."""
    emitted = min(count, max_tokens)
    tokens = tuple((_FIRST_TOKENS if i == 0 else _NEXT_TOKENS)[i % len(VOCABULARY)] for i in range(emitted))
    return tokens, ("length" if emitted < count else "stop")


def simulated_tokens(prompt: str, max_tokens: int) -> tuple[list[str], str]:
    """Return the deterministic answer tokens for a prompt and the finish reason."""
    tokens, reason = prompt_answer(prompt, max_tokens)
    return list(tokens), reason


def estimate_prompt_tokens(prompt: str) -> int:
    """Rough prompt token count the simulator reports: about 4 characters a token."""
    return max(1, math.ceil(len(prompt) / 4))


def second_miner_prompt(prompt: str) -> str:
    # A fixed suffix gives the decoy miner a different but still deterministic text.
    return prompt + "\x00second-miner"
