"""Template filters of the billing page: money from integer micro-units (rules in billing.money)."""

from __future__ import annotations

from django import template

from billing.money import format_micros_cents, format_micros_exact

register = template.Library()


@register.filter
def money(micros: int | None) -> str:
    """To the cent, half up: "$1.23"."""
    return "" if micros is None else format_micros_cents(int(micros))


@register.filter
def money_exact(micros: int | None) -> str:
    """Every micro-unit: "$1.234567"."""
    return "" if micros is None else format_micros_exact(int(micros))


@register.filter
def money_column(micros: int | None) -> str:
    """Every micro-unit, all six decimals, for columns that line up: "$1.500000"."""
    return "" if micros is None else format_micros_exact(int(micros), full=True)
