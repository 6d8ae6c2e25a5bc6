"""Signals the usage app sends upward (it sits below the portal and the gateway, docs/ARCHITECTURE.md, so it never
imports them: whoever cares connects a receiver)."""

from __future__ import annotations

from django.dispatch import Signal

# The error codes of the limiter's refusals of a request allowance (gateway.errors QuotaExceeded and RateLimited;
# tests/test_limit_mail.py holds the two lists together). Spelled out here: usage sits below the gateway.
LIMIT_REFUSAL_CODES = frozenset({"insufficient_quota", "rate_limit_exceeded"})

# Sent after a usage batch holding refusals with those codes has committed, with `organization_ids` (a set of ints):
# the organizations whose allowances may be used up (portal/limit_mail.py mails their owners and admins once per
# window). Sent robustly: a receiver that fails is logged by Django and never reaches the writer.
limit_refusals_recorded = Signal()
