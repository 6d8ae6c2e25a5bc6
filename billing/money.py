"""Money as people read it, from integer micro-units (1e-6 of a dollar), in integer arithmetic only.

Two forms, one rule each:

- exact (`format_micros_exact`): every micro-unit shown, trailing zeros after the cents dropped:
  1_234_567 → "$1.234567", 1_500_000 → "$1.50", 37 → "$0.000037". Prices and notes use it. With
  `full=True` all six decimals stay ("$1.500000"), so a column of amounts lines up on the decimal point:
  the ledger's amounts and balances, never a rounding of what was billed.
- cents (`format_micros_cents`): rounded to the cent, half up on the magnitude (half away from zero), so
  a debit and the credit that reverses it read the same: 1_235_000 → "$1.24", -1_235_000 → "-$1.24",
  1_234_999 → "$1.23". A value that rounds to zero has no sign: -4_999 → "$0.00". Headline totals use
  it, with the exact value alongside.

Both put thousands separators in the dollars ("$12,345.67") and the minus sign before the dollar sign.
"""

from __future__ import annotations

from decimal import Decimal

MICROS_PER_DOLLAR = 1_000_000
MICROS_PER_CENT = 10_000
MICRO_DOLLAR = Decimal("0.000001")


def format_micros_exact(micros: int, *, full: bool = False) -> str:
    dollars, fraction = divmod(abs(micros), MICROS_PER_DOLLAR)
    digits = f"{fraction:06d}" if full else f"{fraction:06d}".rstrip("0").ljust(2, "0")
    sign = "-" if micros < 0 else ""
    return f"{sign}${dollars:,}.{digits}"


def round_micros_to_cents(micros: int) -> int:
    """Whole cents, half up on the magnitude: (|m| + half a cent) // one cent, with the sign put back."""
    cents = (abs(micros) + MICROS_PER_CENT // 2) // MICROS_PER_CENT
    return -cents if micros < 0 else cents


def format_micros_cents(micros: int) -> str:
    cents = round_micros_to_cents(micros)
    dollars, rest = divmod(abs(cents), 100)
    sign = "-" if cents < 0 else ""
    return f"{sign}${dollars:,}.{rest:02d}"


def micros_to_dollars(micros: int) -> Decimal:
    """Micro-units as a Decimal of dollars, exactly, for a form's initial value: 125_000 -> Decimal('0.125000')."""
    return Decimal(micros).scaleb(-6).quantize(MICRO_DOLLAR)


def dollars_to_micros(amount: Decimal) -> int:
    """Dollars with at most six decimals (a form field with decimal_places=6 guarantees it) to micro-units, exactly;
    ValueError for a finer amount rather than a silent rounding."""
    micros = amount.scaleb(6)
    if micros != micros.to_integral_value():
        raise ValueError(f"{amount} has more than six decimals")
    return int(micros)
