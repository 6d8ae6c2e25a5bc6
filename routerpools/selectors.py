"""The routing table the gateway caches: every enabled alias with its candidate upstreams."""

from __future__ import annotations

from dataclasses import dataclass, field

from portal_project.redact import mask_url_credentials
from routerpools.models import ModelAlias, RouterPool


@dataclass(frozen=True, slots=True)
class Upstream:
    base_url: str
    session_id: int
    auth_key: str  # never logged, never shown
    weight: int
    # What logs and breakers call it: the URL without any credentials in it, and the session. Computed once.
    label: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", f"{mask_url_credentials(self.base_url)}#{self.session_id}")

    def __repr__(self) -> str:  # keep the auth key and URL credentials out of any log or traceback
        return f"Upstream({self.label})"


@dataclass(frozen=True, slots=True)
class AliasRoute:
    alias: str
    display_name: str
    pool_name: str
    pool_draining: bool
    prompt_format: str
    max_tokens_cap: int  # the most an answer may have, and what a request without max_tokens gets
    context_length: int | None  # informational, for /v1/models; None: not stated
    timeout_s: int
    prompt_type: int | None
    prompt_template: str
    upstreams: tuple[Upstream, ...]
    created: int


def routing_table() -> dict[str, AliasRoute]:
    """Enabled aliases of enabled pools; an alias whose pool has no upstream is still listed (and answers 503)."""
    pools = {pool.pk: pool for pool in RouterPool.objects.filter(enabled=True).prefetch_related("endpoints", "sessions")}
    table: dict[str, AliasRoute] = {}
    for alias in ModelAlias.objects.filter(enabled=True, pool__enabled=True):
        pool = pools.get(alias.pool_id)
        if pool is None:
            continue
        upstreams = tuple(
            Upstream(
                base_url=endpoint.base_url.rstrip("/"),
                session_id=session.session_id,
                auth_key=session.auth_key or endpoint.auth_key,
                weight=max(1, endpoint.weight),
            )
            for endpoint in sorted(pool.endpoints.all(), key=lambda e: e.pk)
            if endpoint.enabled
            for session in sorted(pool.sessions.all(), key=lambda s: s.pk)
            if session.enabled
        )
        table[alias.alias] = AliasRoute(
            alias=alias.alias,
            display_name=alias.display_name or alias.alias,
            pool_name=pool.name,
            pool_draining=pool.draining,
            prompt_format=alias.prompt_format,
            max_tokens_cap=alias.max_tokens_cap,
            context_length=alias.context_length,
            timeout_s=alias.upstream_timeout_s,
            prompt_type=alias.prompt_type,
            prompt_template=alias.prompt_template,
            upstreams=upstreams,
            created=int(alias.created_at.timestamp()),
        )
    return table
