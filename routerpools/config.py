"""Parsing the PORTAL_ROUTER_* environment maps into one validated pool configuration."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from portal_project.redact import HIDDEN, mask_url_credentials

POOLS_VAR = "PORTAL_ROUTER_POOLS_JSON"
SESSIONS_VAR = "PORTAL_ROUTER_MODEL_SESSIONS_JSON"
MODEL_KEYS_VAR = "PORTAL_ROUTER_MODEL_AUTH_KEYS_JSON"
SESSION_KEYS_VAR = "PORTAL_ROUTER_SESSION_AUTH_KEYS_JSON"
DEFAULT_MODEL_VAR = "PORTAL_DEFAULT_MODEL"


class RouterConfigError(ValueError):
    """A malformed router variable; the message starts with the variable's name."""

    def __init__(self, variable: str, problem: str) -> None:
        self.variable = variable
        self.problem = problem
        super().__init__(f"{variable}: {problem}")


@dataclass(frozen=True, slots=True)
class EnvAlias:
    alias: str
    urls: tuple[str, ...]
    sessions: tuple[int, ...]
    # auth key per session id; the alias key already applied where no session key exists
    session_keys: dict[int, str] = field(default_factory=dict)
    alias_key: str = ""

    def __repr__(self) -> str:  # the settings dump and tracebacks show this: keys hidden, URLs without credentials
        urls = tuple(mask_url_credentials(url) for url in self.urls)
        keys = "{" + ", ".join(f"{sid}: {HIDDEN}" for sid in self.session_keys) + "}"
        return (
            f"EnvAlias(alias={self.alias!r}, urls={urls!r}, sessions={self.sessions!r}, session_keys={keys}, "
            f"alias_key={HIDDEN if self.alias_key else repr('')})"
        )


@dataclass(frozen=True, slots=True)
class EnvRouterConfig:
    aliases: tuple[EnvAlias, ...]
    default_model: str

    @property
    def is_empty(self) -> bool:
        return not self.aliases


def _load_object(variable: str, raw: str) -> dict:
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RouterConfigError(variable, f"not valid JSON ({exc.msg} at position {exc.pos})") from None
    except RecursionError:  # the decoder's own limit (~1,000 levels): still the one line, not a traceback
        raise RouterConfigError(variable, "not valid JSON (nested too deeply)") from None
    if not isinstance(value, dict):
        raise RouterConfigError(variable, "must be a JSON object")
    return value


def _check_alias(variable: str, alias: object) -> str:
    if not isinstance(alias, str) or not alias.strip() or len(alias) > 100 or any(c.isspace() for c in alias):
        raise RouterConfigError(variable, f"invalid model alias {alias!r}")
    return alias


def _check_url(variable: str, alias: str, url: object) -> str:
    if not isinstance(url, str):
        raise RouterConfigError(variable, f"{alias}: URLs must be strings")
    parts = urlsplit(url.strip())
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise RouterConfigError(variable, f"{alias}: {url!r} is not an http(s) URL")
    return url.strip().rstrip("/")


def _session_id(variable: str, alias: str, value: object) -> int:
    if isinstance(value, bool):
        raise RouterConfigError(variable, f"{alias}: session ids must be integers")
    if isinstance(value, int):
        sid = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        # isascii: str.isdigit() also accepts characters such as '²' that int() refuses
        sid = int(value.strip())
    else:
        raise RouterConfigError(variable, f"{alias}: session id {value!r} is not an integer")
    if sid < 0:
        raise RouterConfigError(variable, f"{alias}: session id {sid} is negative")
    return sid


def parse_router_env(env: dict[str, str]) -> EnvRouterConfig:
    """Validate the five router variables together; raises RouterConfigError naming the variable."""
    pools = _load_object(POOLS_VAR, env.get(POOLS_VAR, ""))
    sessions = _load_object(SESSIONS_VAR, env.get(SESSIONS_VAR, ""))
    model_keys = _load_object(MODEL_KEYS_VAR, env.get(MODEL_KEYS_VAR, ""))
    session_keys_raw = _load_object(SESSION_KEYS_VAR, env.get(SESSION_KEYS_VAR, ""))
    default_model = env.get(DEFAULT_MODEL_VAR, "").strip()

    for alias in pools:
        _check_alias(POOLS_VAR, alias)
        if alias not in sessions:
            raise RouterConfigError(SESSIONS_VAR, f"alias {alias!r} has a pool but no sessions")
    for alias in sessions:
        _check_alias(SESSIONS_VAR, alias)
        if alias not in pools:
            raise RouterConfigError(POOLS_VAR, f"alias {alias!r} has sessions but no pool URL")
    for alias, key in model_keys.items():
        if alias not in pools:
            raise RouterConfigError(MODEL_KEYS_VAR, f"alias {alias!r} is not in {POOLS_VAR}")
        if not isinstance(key, str) or not key:
            raise RouterConfigError(MODEL_KEYS_VAR, f"{alias}: the key must be a non-empty string")
    session_keys: dict[int, str] = {}
    for sid_raw, key in session_keys_raw.items():
        sid = _session_id(SESSION_KEYS_VAR, "session key", sid_raw)
        if not isinstance(key, str) or not key:
            raise RouterConfigError(SESSION_KEYS_VAR, f"session {sid}: the key must be a non-empty string")
        session_keys[sid] = key

    aliases: list[EnvAlias] = []
    for alias, urls_raw in pools.items():
        url_list = urls_raw if isinstance(urls_raw, list) else [urls_raw]
        if not url_list:
            raise RouterConfigError(POOLS_VAR, f"{alias}: no URL given")
        urls = tuple(dict.fromkeys(_check_url(POOLS_VAR, alias, u) for u in url_list))
        sids_raw = sessions[alias]
        sid_list = sids_raw if isinstance(sids_raw, list) else [sids_raw]
        if not sid_list:
            raise RouterConfigError(SESSIONS_VAR, f"{alias}: no session id given")
        sids = tuple(dict.fromkeys(_session_id(SESSIONS_VAR, alias, s) for s in sid_list))
        aliases.append(
            EnvAlias(
                alias=alias,
                urls=urls,
                sessions=sids,
                session_keys={sid: session_keys[sid] for sid in sids if sid in session_keys},
                alias_key=model_keys.get(alias, ""),
            )
        )

    if default_model and pools and default_model not in pools:
        raise RouterConfigError(DEFAULT_MODEL_VAR, f"{default_model!r} is not an alias in {POOLS_VAR}")
    return EnvRouterConfig(aliases=tuple(aliases), default_model=default_model)
