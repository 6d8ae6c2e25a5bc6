"""A conservative token count without a tokenizer: what prompt reservations, `count_tokens` and unreported usage bill.

The gateway never sees the router model's tokenizer (and cannot download one), yet it must count tokens
when the router does not: the prompt's reservation against tokens per minute, Anthropic's
`message_start.input_tokens` and `/v1/messages/count_tokens`, and the completion of a stream that was
cancelled or failed before the router reported its usage. Characters / 4 undercounts whatever a BPE
tokenizer does not merge well: CJK text is about one token a character (a quarter of chars / 4), and so
are punctuation-heavy code and random identifiers. A client who could pick the text could pay less.

So this counts the way a BPE pre-tokenizer splits text (cl100k's and o200k's regex), costing each piece
at the worse end of what those vocabularies do with it:

- an ASCII letter run (a word, with the space before it) is 1 token, plus 1 per 6 letters (long or rare
  words split), plus 1 per case change inside it (camelCase, base64);
- digits go in groups of three, as both vocabularies split numbers;
- every ASCII punctuation or symbol character is a token, every tab or line break too;
- non-ASCII by script, from the UTF-8 lead byte: Cyrillic 2 characters a token; Latin-1/Latin
  Extended letters, Greek, Armenian, Hebrew, Arabic 1 a character; U+0800-U+0FFF (Indic, Thai, Tibetan,
  poorly merged) 5 per 4 characters; the rest of the BMP (CJK, kana, Hangul, symbols) 1 a character;
  beyond the BMP (emoji) 3 a character; plus 1 per space-separated word of the scripts costed per
  character;
- and never less than characters / 4, the old estimate, whatever the text.

Against the real cl100k_base and o200k_base vocabularies (tests/translate/test_translate_tokens.py holds the
samples and their counts) it comes out at or above both for English, German, Chinese, Japanese, Korean,
Russian, Greek, Arabic, Hindi, Thai, Python, JSON, minified JavaScript, URLs, numbers and emoji: about
1.2x for English prose, 1.3-1.8x for code, 1.0-1.4x cl100k for CJK and non-Latin scripts (o200k, the
gpt-oss vocabulary, merges those better: it counts up to 4x fewer). Random identifiers are its weak spot: a hex digest or
base64 can come out up to a fifth under cl100k's count. A count the router reports always wins over this.

Cost: two byte translations and a dozen `bytes.count` passes, all in C: a few microseconds for a chat
turn, 15-30 ms for a 1 MiB prompt (the largest body a request may bring) on the development machine.
No regular expression and no Python loop over the text.
"""

from __future__ import annotations


def _table(default: bytes, classes: list[tuple[bytes | range | list[int], str]]) -> bytes:
    table = bytearray(default * 256)
    for members, name in classes:
        for byte in members:
            table[byte] = ord(name)
    return bytes(table)


# Each byte of the UTF-8 text becomes its class; continuation bytes (0x80-0xBF) are deleted, so a
# non-ASCII character is its lead byte's class, once.
_CLASSES = _table(
    b".",  # ASCII punctuation, symbols and control characters
    [
        (range(0x61, 0x7B), "a"),
        (range(0x41, 0x5B), "A"),
        (range(0x30, 0x3A), "0"),
        (b" ", " "),
        (range(0x09, 0x0E), "w"),  # tab, line feed, vertical tab, form feed, carriage return
        (range(0xD0, 0xD4), "h"),  # U+0400-U+04FF Cyrillic: two characters a token
        ([*range(0xC0, 0xD0), *range(0xD4, 0xE0)], "x"),  # the rest of U+0080-U+07FF: one a character
        (b"\xe0", "i"),  # U+0800-U+0FFF: Indic, Thai, Lao, Tibetan; five per four characters
        (range(0xE1, 0xF0), "y"),  # the rest of the BMP: CJK, kana, Hangul, symbols; one a character
        (range(0xF0, 0x100), "z"),  # beyond the BMP (emoji): three a character
    ],
)
_CONTINUATION = bytes(range(0x80, 0xC0))
# The class string again with letters as `a`, digits as `0` and everything else as `-`: runs of letters
# and digits start where `-a`, `0a`, `-0`, `a0` occur.
_RUNS = _table(b"-", [(b"aA", "a"), (b"0", "0")])
_LONG_WORD_CHUNK = b"a" * 6


def estimate_tokens(text: str) -> int:
    """Tokens a BPE tokenizer would make of `text`, erring high (see the module docstring); 0 for ''."""
    if not text:
        return 0
    ascii_only = text.isascii()  # O(1): CPython keeps the flag
    raw = text.encode("utf-8", "surrogatepass")  # a lone surrogate from upstream text must not raise
    classes = raw.translate(_CLASSES) if ascii_only else raw.translate(_CLASSES, _CONTINUATION)
    runs = classes.translate(_RUNS)
    count, count_runs = classes.count, runs.count
    first = runs[:1]
    words = count_runs(b"-a") + count_runs(b"0a") + (first == b"a")
    # Non-overlapping chunks of 6 letters: one more token per 6 letters of every word.
    tokens = words + count_runs(_LONG_WORD_CHUNK) + count(b"aA") + count(b"AAa")
    numbers = count_runs(b"-0") + count_runs(b"a0") + (first == b"0")
    tokens += (count(b"0") + 2 * numbers) // 3  # ceil(digits / 3) per number, summed
    tokens += count(b".") + count(b"w") + count(b" 0")  # a space before a number is a token of its own
    if not ascii_only:
        tokens += (count(b"h") + 1) // 2 + count(b"x") + (5 * count(b"i") + 3) // 4 + count(b"y") + 3 * count(b"z")
        tokens += count(b" x") + count(b" i") + count(b" y")
    return max(tokens, (len(text) + 3) // 4)
