"""Settings for the portal and gateway; production differs from a laptop only by environment."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import dj_database_url

from portal_project.env import env_bool, env_int, env_list, env_str, fail
from routerpools.config import RouterConfigError, parse_router_env

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)
_DEV_SECRET = "dev-insecure-secret-key-do-not-use-in-production"
SECRET_KEY = env_str("SECRET_KEY") or _DEV_SECRET
if SECRET_KEY == _DEV_SECRET and not DEBUG and not env_bool("PORTAL_ALLOW_DEV_SECRET", False):
    fail("SECRET_KEY", "must be set when DEBUG is off (or set DEBUG=1 for local development)")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "daphne",
    "accounts.apps.PortalAdminConfig",  # django.contrib.admin, signed in through allauth (accounts/admin_site.py)
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.sites",
    "rest_framework",
    "allauth",
    "allauth.account",
    "channels",
    "accounts",
    "apikeys",
    "routerpools",
    "billing",
    "usage",
    "responsestore",
    "gateway",
    "dbsecurity",  # row-level security on every table (Supabase's data API); PostgreSQL only
    "portal",  # the customer-facing web pieces, on top of every domain app (docs/ARCHITECTURE.md)
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files (admin, portal) from STATIC_ROOT, before sessions and auth: a stylesheet costs no session lookup.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "portal_project.security.PortalSecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
]

ROOT_URLCONF = "portal_project.urls"
ASGI_APPLICATION = "portal_project.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portal.context_processors.mail",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------------------
_database_url = env_str("DATABASE_URL")
_supabase_url = env_str("PORTAL_SUPABASE_DB_URL")
_db_source = "DATABASE_URL" if _database_url else "PORTAL_SUPABASE_DB_URL"
# An old or misspelt PORTAL_SUPABASE_ name would be ignored without a word, and the gateway would start on another
# database than the operator meant (below: none at all). docs/configuration.md documents one.
for _name in sorted(os.environ):
    if _name.startswith("PORTAL_SUPABASE_") and _name != "PORTAL_SUPABASE_DB_URL":
        fail(_name, "not a setting: the Supabase connection string goes in PORTAL_SUPABASE_DB_URL (or DATABASE_URL)")
if not (_database_url or _supabase_url) and not DEBUG and not env_bool("PORTAL_ALLOW_DEV_SECRET", False):
    # The SQLite file is for `make run` and the tests (DEBUG); a production start without a database URL is a mistake.
    fail("DATABASE_URL", "must be set when DEBUG is off (or PORTAL_SUPABASE_DB_URL): production never runs on the SQLite file")
_url = _database_url or _supabase_url or f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
try:
    _db = dj_database_url.parse(_url, conn_max_age=600, conn_health_checks=True)
except Exception as exc:  # dj-database-url raises several types for a bad URL
    fail(_db_source, f"not a usable database URL ({exc.__class__.__name__})")
# Django's psycopg pool, per process (PostgreSQL, not through a transaction pooler). Who takes connections: the
# gateway's ORM work runs on the event loop's default executor (gateway/db.py: min(32, cores + 4) threads, 6 on 2
# cores, 8 on 4; the usage recorder and the state poller among them), each taking one for a call and giving it back;
# every portal request Django runs in a thread of its own for the length of the request. The default max, 10, covers
# the executor of a machine of up to 6 cores with room for a few portal requests at once; the min, 2, keeps the
# poller's and the recorder's connections warm. A request that finds the pool exhausted waits at most
# PORTAL_DB_POOL_TIMEOUT_MS, then fails like a database that is away (the gateway serves from its cache), never hangs.
PORTAL_DB_POOL_MIN = env_int("PORTAL_DB_POOL_MIN", 2, minimum=0)
PORTAL_DB_POOL_MAX = env_int("PORTAL_DB_POOL_MAX", 10, minimum=1)
if PORTAL_DB_POOL_MIN > PORTAL_DB_POOL_MAX:
    fail("PORTAL_DB_POOL_MIN", f"must be at most PORTAL_DB_POOL_MAX ({PORTAL_DB_POOL_MAX}), got {PORTAL_DB_POOL_MIN}")
PORTAL_DB_POOL_TIMEOUT_S = env_int("PORTAL_DB_POOL_TIMEOUT_MS", 2000, minimum=100) / 1000
PORTAL_DB_POOLED = False
if _db["ENGINE"] == "django.db.backends.postgresql":
    _db.setdefault("OPTIONS", {})
    # A host that drops packets must not hold a connection attempt (and its thread) for the kernel's minutes.
    _db["OPTIONS"].setdefault("connect_timeout", 5)
    # TLS: PORTAL_DB_SSLMODE if set, else the URL's sslmode, else `require` for Supabase's hosts (their direct and
    # pooler endpoints both speak TLS; libpq's own default, `prefer`, would quietly fall back to plain text).
    # `verify-full` also checks the certificate's chain and name: it needs the CA (PORTAL_DB_SSLROOTCERT, e.g.
    # Supabase's downloadable root certificate, or `system` for the OS store with libpq 16+).
    _host = str(_db.get("HOST") or "").lower().rstrip(".")
    _sslmode = (
        env_str("PORTAL_DB_SSLMODE")
        or _db["OPTIONS"].get("sslmode")
        or ("require" if _host.endswith((".supabase.co", ".pooler.supabase.com")) else "")
    )
    if _sslmode:
        if _sslmode not in {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}:
            fail(
                "PORTAL_DB_SSLMODE" if env_str("PORTAL_DB_SSLMODE") else _db_source,
                f"sslmode must be one of disable, allow, prefer, require, verify-ca, verify-full; got {_sslmode!r}",
            )
        _db["OPTIONS"]["sslmode"] = _sslmode
    _sslrootcert = env_str("PORTAL_DB_SSLROOTCERT")
    if _sslrootcert:
        if _sslrootcert != "system" and not os.path.isfile(_sslrootcert):
            fail("PORTAL_DB_SSLROOTCERT", f"no such file: {_sslrootcert} (a PEM CA bundle, or 'system')")
        _db["OPTIONS"]["sslrootcert"] = _sslrootcert
    if _sslmode in {"verify-ca", "verify-full"} and not _db["OPTIONS"].get("sslrootcert"):
        fail("PORTAL_DB_SSLMODE", f"{_sslmode} checks the server's certificate: set PORTAL_DB_SSLROOTCERT to its CA bundle")
    # Supabase's pooler in transaction mode (and pgbouncer generally) cannot keep
    # server-side prepared statements or cursors across transactions.
    if _supabase_url and not _database_url or ":6543" in _url or env_bool("PORTAL_DB_POOLER", False):
        _db["OPTIONS"]["prepare_threshold"] = None
        _db["DISABLE_SERVER_SIDE_CURSORS"] = True
        _db["CONN_MAX_AGE"] = 0
    else:
        # Not behind the transaction pooler: the pooler pools already, and a client pool in front of it is untested.
        PORTAL_DB_POOLED = True
        _db["CONN_MAX_AGE"] = 0  # Django refuses persistent connections with a pool: the pool keeps them
        _db["OPTIONS"]["pool"] = {
            "min_size": PORTAL_DB_POOL_MIN,
            "max_size": PORTAL_DB_POOL_MAX,
            "timeout": PORTAL_DB_POOL_TIMEOUT_S,
            # psycopg_pool retries a lost connection with a doubling delay (1, 2, 4, 8 … s) until this: with its
            # default of 5 minutes the pool came back up to 30 s after a 30 s outage ended. Giving up a retry chain
            # after 5 s makes the next request that wants a connection start a fresh one, 1 s apart.
            "reconnect_timeout": 5,
            "name": "portal",
        }
elif _db["ENGINE"] == "django.db.backends.sqlite3":
    _db["CONN_MAX_AGE"] = 0
    _db.setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )
    # A file, not memory, so that a live daphne started by the tests shares it.
    _db["TEST"] = {"NAME": str(BASE_DIR / "test_db.sqlite3")}
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache, channel layer -------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    if not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
        fail("REDIS_URL", "must start with redis://, rediss:// or unix://")
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env_str("PORTAL_CACHE_PREFIX", "portal"),
            "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient", "SOCKET_CONNECT_TIMEOUT": 2, "SOCKET_TIMEOUT": 2},
        }
    }
    # channels_redis waits for messages with BZPOPMIN of 5 s, and redis-py 8 gives connections a default 5 s socket
    # timeout: a socket that waited its whole BZPOPMIN then raised TimeoutError and killed the consumer (the live
    # usage feed dropped about every 5 s). The read timeout must outlast the blocking wait.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 15, "socket_connect_timeout": 5}]},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Auth --------------------------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
SITE_ID = 1
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
LOGIN_REDIRECT_URL = "/portal/api-keys"
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")

# --- Keys --------------------------------------------------------------------------------------
PORTAL_KEY_ISSUER = env_str("PORTAL_KEY_ISSUER", "local")
if PORTAL_KEY_ISSUER not in {"local", "unkey"}:
    fail("PORTAL_KEY_ISSUER", f"must be 'local' or 'unkey', got {PORTAL_KEY_ISSUER!r}")
PORTAL_API_KEY_PEPPER = env_str("PORTAL_API_KEY_PEPPER")
if not PORTAL_API_KEY_PEPPER:
    if not DEBUG and SECRET_KEY != _DEV_SECRET and not env_bool("PORTAL_ALLOW_DEV_SECRET", False):
        fail("PORTAL_API_KEY_PEPPER", "must be set in production (an HMAC secret for stored key hashes)")
    PORTAL_API_KEY_PEPPER = hashlib.sha256(f"api-key-pepper:{SECRET_KEY}".encode()).hexdigest()
PORTAL_UNKEY_ROOT_KEY = env_str("PORTAL_UNKEY_ROOT_KEY")
PORTAL_UNKEY_API_ID = env_str("PORTAL_UNKEY_API_ID")
PORTAL_UNKEY_BASE_URL = env_str("PORTAL_UNKEY_BASE_URL", "https://api.unkey.com").rstrip("/")
if PORTAL_KEY_ISSUER == "unkey" and not (PORTAL_UNKEY_ROOT_KEY and PORTAL_UNKEY_API_ID):
    fail("PORTAL_UNKEY_ROOT_KEY", "PORTAL_KEY_ISSUER=unkey needs PORTAL_UNKEY_ROOT_KEY and PORTAL_UNKEY_API_ID")
if not PORTAL_UNKEY_BASE_URL.startswith(("https://", "http://")):
    fail("PORTAL_UNKEY_BASE_URL", "must start with https:// (or http:// for a local fake)")
# Total deadline of one Unkey call; verification runs on every /v1 request, so keep it short.
PORTAL_UNKEY_TIMEOUT_S = float(env_int("PORTAL_UNKEY_TIMEOUT_MS", 2000, minimum=50)) / 1000
# A valid verification is reused for this long (gateway/auth.py); 0 asks Unkey on every request. Local revocation
# and suspension stay immediate either way: our own key record is checked on every request, cached or not.
PORTAL_UNKEY_CACHE_TTL_S = float(env_int("PORTAL_UNKEY_CACHE_TTL_MS", 1000, minimum=0)) / 1000

# --- Router pools and the gateway ----------------------------------------------------------
try:
    PORTAL_ROUTER_ENV = parse_router_env(dict(os.environ))
except RouterConfigError as exc:
    fail(exc.variable, exc.problem)
PORTAL_DEFAULT_MODEL = PORTAL_ROUTER_ENV.default_model
PORTAL_PUBLIC_BASE_URL = env_str("PORTAL_PUBLIC_BASE_URL", "http://127.0.0.1:8000").rstrip("/")
PORTAL_UPSTREAM_TIMEOUT_S = env_int("PORTAL_UPSTREAM_TIMEOUT_S", 120, minimum=1)
PORTAL_MAX_BODY_BYTES = env_int("PORTAL_MAX_BODY_BYTES", 1_048_576, minimum=1024)
# The server layer (portal_project/twisted_tuning.py): a request's head and body must arrive within this many seconds
# of its first byte (else 408 and the connection is closed); a connection idle between requests is closed after
# the keep-alive timeout, which must stay above the idle timeout of the load balancer's connections to us.
PORTAL_REQUEST_READ_TIMEOUT_S = env_int("PORTAL_REQUEST_READ_TIMEOUT_S", 30, minimum=1)
PORTAL_KEEPALIVE_TIMEOUT_S = env_int("PORTAL_KEEPALIVE_TIMEOUT_S", 75, minimum=1)
# How many proxies of ours append to X-Forwarded-For in front of the gateway; 0: the header is ignored and the
# client is the TCP peer. Read once, in portal_project/proxies.py, for everything that wants the client's address.
PORTAL_TRUSTED_PROXY_COUNT = env_int("PORTAL_TRUSTED_PROXY_COUNT", 0, minimum=0)
# Let the gateway read bodies up to our own limit and answer 413 itself, in the caller's shape.
DATA_UPLOAD_MAX_MEMORY_SIZE = PORTAL_MAX_BODY_BYTES + 1
# How often each process checks whether keys, organizations or pools changed.
# A fallback now: changes reach every process at once over Redis pub/sub (gateway/invalidation.py); the poll
# catches what a dropped subscription missed, and is the only path without Redis.
PORTAL_CACHE_POLL_S = float(env_int("PORTAL_CACHE_POLL_MS", 250, minimum=10)) / 1000
# The Redis channel of those changes. Empty: derived from the database name, so two deployments (or two test
# databases) sharing one Redis never hear each other's changes; pub/sub channels ignore Redis's db number.
PORTAL_CACHE_CHANNEL = env_str("PORTAL_CACHE_CHANNEL")
# How long the change log keeps rows. A process that could not read it for longer reloads everything.
PORTAL_CACHE_RETENTION_S = env_int("PORTAL_CACHE_RETENTION_S", 3600, minimum=60)
PORTAL_USAGE_FLUSH_S = float(env_int("PORTAL_USAGE_FLUSH_MS", 200, minimum=10)) / 1000
# A client that hangs up right after the last text of a stream, before the router's usage chunk: keep reading the
# upstream this long for that chunk (the router's count is billed, not an estimate), then close it. 0: never wait.
PORTAL_CANCEL_USAGE_GRACE_MS = env_int("PORTAL_CANCEL_USAGE_GRACE_MS", 1000, minimum=0)
if PORTAL_CANCEL_USAGE_GRACE_MS > 10_000:
    fail(
        "PORTAL_CANCEL_USAGE_GRACE_MS",
        f"must be at most 10000 (it holds an upstream after its client left), got {PORTAL_CANCEL_USAGE_GRACE_MS}",
    )
PORTAL_CANCEL_USAGE_GRACE_S = PORTAL_CANCEL_USAGE_GRACE_MS / 1000
# What may wait in memory while the database is away (gateway/recorder.py): usage rows are never dropped, so at
# this many the gateway refuses billable requests with 503 until they drain (alarming at 80%); request log rows
# over theirs are dropped, oldest first, and counted.
PORTAL_USAGE_QUEUE_MAX = env_int("PORTAL_USAGE_QUEUE_MAX", 100_000, minimum=10)
PORTAL_REQUEST_LOG_QUEUE_MAX = env_int("PORTAL_REQUEST_LOG_QUEUE_MAX", 100_000, minimum=10)
# Requests refused before authentication are counted in metrics, not written; 1 in N still leaves a row (0: none).
PORTAL_ANONYMOUS_LOG_SAMPLE = env_int("PORTAL_ANONYMOUS_LOG_SAMPLE", 0, minimum=0)
# `manage.py prune_request_logs` deletes request log rows older than this many days (0: keep them forever).
PORTAL_REQUEST_LOG_RETENTION_DAYS = env_int("PORTAL_REQUEST_LOG_RETENTION_DAYS", 30, minimum=0)
# `/v1/responses` stores its answers (unless `store: false`) so a conversation continues from a previous response's
# id: `manage.py prune_responses` deletes them after this many days (0: kept), and past it they are not found
# even before the prune ran. One stored response holds at most this many characters of conversation (every
# turn, earlier responses' included, and the instructions) plus its answer, and a conversation at most this many
# responses; beyond either, a request that would store or continue one is refused with a 400.
PORTAL_RESPONSES_RETENTION_DAYS = env_int("PORTAL_RESPONSES_RETENTION_DAYS", 30, minimum=0)
PORTAL_RESPONSES_MAX_CONVERSATION_CHARS = env_int("PORTAL_RESPONSES_MAX_CONVERSATION_CHARS", 1_048_576, minimum=1024)
PORTAL_RESPONSES_MAX_CHAIN = env_int("PORTAL_RESPONSES_MAX_CHAIN", 100, minimum=1)
# Stored responses wait in memory for the usage writer's next round, within this bound (while the database is away);
# at it, requests that would store one are refused with 503 until the writer catches up, so none is lost.
PORTAL_RESPONSES_QUEUE_MAX_MB = env_int("PORTAL_RESPONSES_QUEUE_MAX_MB", 256, minimum=1)
# A response id this process does not hold and the database does not have yet may still be on its way from another
# gateway process (written within PORTAL_USAGE_FLUSH_MS there): look again for up to this long before a 404.
PORTAL_RESPONSES_READ_WAIT_S = float(env_int("PORTAL_RESPONSES_READ_WAIT_MS", 1000, minimum=0)) / 1000

# The operators' token: /metrics (Prometheus) and the details of /health want `Authorization: Bearer <token>`.
# Required when DEBUG is off; without it (DEBUG, `make run`) both are open to anyone.
PORTAL_METRICS_TOKEN = env_str("PORTAL_METRICS_TOKEN")
if not PORTAL_METRICS_TOKEN and not DEBUG and not env_bool("PORTAL_ALLOW_DEV_SECRET", False):
    fail("PORTAL_METRICS_TOKEN", "must be set when DEBUG is off (the bearer token for /metrics and the details of /health)")
if PORTAL_METRICS_TOKEN and len(PORTAL_METRICS_TOKEN) < 16:
    fail("PORTAL_METRICS_TOKEN", f"must be at least 16 characters (a random token), got {len(PORTAL_METRICS_TOKEN)}")

# Upstream health: a circuit opens after consecutive failures and half-opens after a cool-down;
# every process probes each router's /api/v1/status in the background.
PORTAL_BREAKER_FAILURES = env_int("PORTAL_BREAKER_FAILURES", 3, minimum=1)
PORTAL_BREAKER_COOLDOWN_MS = env_int("PORTAL_BREAKER_COOLDOWN_MS", 10_000, minimum=100)
PORTAL_HEALTH_INTERVAL_MS = env_int("PORTAL_HEALTH_INTERVAL_MS", 5_000, minimum=100)
# On SIGTERM: stop listening, let requests in flight (streams too) finish for up to this long, then stop.
PORTAL_SHUTDOWN_GRACE_S = env_int("PORTAL_SHUTDOWN_GRACE_S", 20, minimum=0)

# Rate limits and allowances (gateway/limits/): counters in Redis when REDIS_URL is set.
PORTAL_LIMITS_FAIL_MODE = env_str("PORTAL_LIMITS_FAIL_MODE", "open").lower()
if PORTAL_LIMITS_FAIL_MODE not in {"open", "closed"}:
    fail("PORTAL_LIMITS_FAIL_MODE", f"must be 'open' or 'closed', got {PORTAL_LIMITS_FAIL_MODE!r}")
PORTAL_LIMITS_PREFIX = env_str("PORTAL_LIMITS_PREFIX", "lim")
PORTAL_LIMITS_SLOT_TTL_S = env_int("PORTAL_LIMITS_SLOT_TTL_S", 300, minimum=10)
PORTAL_LIMITS_MAX_CONNECTIONS = env_int("PORTAL_LIMITS_MAX_CONNECTIONS", 50, minimum=1)

# --- Payments: Stripe Checkout, the customer portal, webhooks (billing/payments.py) ----------------------------------
# Without a secret key payments are off: the billing page hides them and says how to turn them on, and the webhook
# endpoint answers 404. With one, the webhook secret is required: payments whose webhooks cannot be verified would
# take money and never credit it.
PORTAL_STRIPE_SECRET_KEY = env_str("PORTAL_STRIPE_SECRET_KEY")
PORTAL_STRIPE_WEBHOOK_SECRET = env_str("PORTAL_STRIPE_WEBHOOK_SECRET")
PORTAL_STRIPE_API_BASE = env_str("PORTAL_STRIPE_API_BASE", "https://api.stripe.com").rstrip("/")
if PORTAL_STRIPE_SECRET_KEY and not PORTAL_STRIPE_SECRET_KEY.startswith(("sk_", "rk_")):
    fail("PORTAL_STRIPE_SECRET_KEY", "must be a Stripe secret or restricted key (sk_... or rk_...)")
if PORTAL_STRIPE_SECRET_KEY and not PORTAL_STRIPE_WEBHOOK_SECRET:
    fail("PORTAL_STRIPE_WEBHOOK_SECRET", "must be set when PORTAL_STRIPE_SECRET_KEY is (the endpoint's whsec_... signing secret)")
if PORTAL_STRIPE_WEBHOOK_SECRET and not PORTAL_STRIPE_WEBHOOK_SECRET.startswith("whsec_"):
    fail("PORTAL_STRIPE_WEBHOOK_SECRET", "must be a Stripe webhook signing secret (whsec_...)")
if not PORTAL_STRIPE_API_BASE.startswith(("https://", "http://")):
    fail("PORTAL_STRIPE_API_BASE", "must start with https:// (or http:// for a local fake)")
PORTAL_STRIPE_TIMEOUT_S = float(env_int("PORTAL_STRIPE_TIMEOUT_MS", 10_000, minimum=100)) / 1000
# A top-up's bounds in US cents; Stripe charges at least $0.50 and at most $999,999.99.
PORTAL_TOPUP_MIN_CENTS = env_int("PORTAL_TOPUP_MIN_CENTS", 500, minimum=50)
PORTAL_TOPUP_MAX_CENTS = env_int("PORTAL_TOPUP_MAX_CENTS", 100_000, minimum=50)
if not PORTAL_TOPUP_MIN_CENTS <= PORTAL_TOPUP_MAX_CENTS <= 99_999_999:
    fail(
        "PORTAL_TOPUP_MAX_CENTS",
        f"must be from PORTAL_TOPUP_MIN_CENTS ({PORTAL_TOPUP_MIN_CENTS}) to 99999999, got {PORTAL_TOPUP_MAX_CENTS}",
    )
PORTAL_RATELIMIT_CHECKOUT = env_str("PORTAL_RATELIMIT_CHECKOUT", "30/h")  # Checkout and portal sessions per user
# Prices (billing.ModelPrice, micro-units per million tokens): an alias created without a price (sync_router_pools,
# the admin) gets an alias-wide price of these two, so none is left unpriced; 0 and 0 makes new aliases free.
PORTAL_DEFAULT_INPUT_PRICE_PER_MILLION = env_int("PORTAL_DEFAULT_INPUT_PRICE_PER_MILLION", 100_000, minimum=0)
PORTAL_DEFAULT_OUTPUT_PRICE_PER_MILLION = env_int("PORTAL_DEFAULT_OUTPUT_PRICE_PER_MILLION", 400_000, minimum=0)
for _name in ("PORTAL_DEFAULT_INPUT_PRICE_PER_MILLION", "PORTAL_DEFAULT_OUTPUT_PRICE_PER_MILLION"):
    if globals()[_name] > 1_000_000_000:  # billing.services.MAX_PRICE_PER_MILLION: $1,000 per million tokens
        fail(_name, f"must be at most 1000000000 micro-units ($1,000 per million tokens), got {globals()[_name]}")
# Alert webhooks (billing/alerts.py): with this on, an organization's URL may be plain http or on a private network
# (a laptop's receiver); off (production), https to public addresses only.
PORTAL_ALERT_WEBHOOK_ALLOW_INSECURE = env_bool("PORTAL_ALERT_WEBHOOK_ALLOW_INSECURE", DEBUG)
# Spend alerts (usage/alerts.py): a background thread checks the organizations a usage batch billed at most this often
# per process (a burst of batches is one check); a webhook POST waits at most the timeout; a prepaid balance below
# this percent of the last top-up is "low" (0: no low-balance alert).
PORTAL_SPEND_ALERT_INTERVAL_S = float(env_int("PORTAL_SPEND_ALERT_INTERVAL_MS", 2000, minimum=10)) / 1000
PORTAL_ALERT_WEBHOOK_TIMEOUT_S = float(env_int("PORTAL_ALERT_WEBHOOK_TIMEOUT_MS", 3000, minimum=100)) / 1000
if PORTAL_ALERT_WEBHOOK_TIMEOUT_S > 30:
    fail("PORTAL_ALERT_WEBHOOK_TIMEOUT_MS", f"must be at most 30000, got {int(PORTAL_ALERT_WEBHOOK_TIMEOUT_S * 1000)}")
PORTAL_LOW_BALANCE_ALERT_PERCENT = env_int("PORTAL_LOW_BALANCE_ALERT_PERCENT", 20, minimum=0)
if PORTAL_LOW_BALANCE_ALERT_PERCENT > 100:
    fail("PORTAL_LOW_BALANCE_ALERT_PERCENT", f"must be at most 100, got {PORTAL_LOW_BALANCE_ALERT_PERCENT}")

# --- HTTPS, cookies and security headers ----------------------------------------------------------------------
# Behind HTTPS (the public base URL says so) with DEBUG off, each of these defaults to on; each is settable alone.
_BEHIND_HTTPS = PORTAL_PUBLIC_BASE_URL.startswith("https://") and not DEBUG
# TLS ends at the load balancer, which says so in X-Forwarded-Proto. That header is read in one place, with
# X-Forwarded-For and as far as PORTAL_TRUSTED_PROXY_COUNT trusts it (portal_project/proxies.py sets the request's
# scheme): Django must not read it a second time, unconditionally. A deploy check warns when the redirect is on and
# no proxy is trusted (every request would look like plain HTTP and be redirected for ever).
SECURE_PROXY_SSL_HEADER = None
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", _BEHIND_HTTPS)
# A load balancer's probe speaks plain HTTP. /health, /ready and /metrics are answered by gateway/asgi.py before Django's
# middleware anyway; listed so that they stay reachable if that ever changes.
SECURE_REDIRECT_EXEMPT = [r"^health$", r"^ready$", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000 if _BEHIND_HTTPS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", _BEHIND_HTTPS)
# The preload list binds the whole registered domain for good, so it is the operator's call, off by default; Django's
# reminder of it (security.W021) is silenced while it is off, so that `check --deploy` is clean on a good deployment.
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", _BEHIND_HTTPS)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", _BEHIND_HTTPS)
# Django's defaults, stated: nosniff, Referrer-Policy same-origin, COOP same-origin, X-Frame-Options DENY.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# The Content-Security-Policy of every page Django serves (portal_project.security.PortalSecurityMiddleware): our own
# scripts and styles only, no inline script, style attribute or event handler (the templates have none), no framing.
PORTAL_CSP = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],  # the favicon is an inline SVG
    "connect-src": ["'self'"],  # the playground's fetch and the live feed's WebSocket, same origin
    "object-src": ["'none'"],
    "base-uri": ["'none'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}
if PORTAL_STRIPE_SECRET_KEY:
    # A payment form posts here and is redirected to Stripe's hosted pages; browsers hold the redirect to form-action.
    # Stripe serves them from its own origins; a fake (PORTAL_STRIPE_API_BASE elsewhere) serves them from its own.
    _STRIPE_DEFAULT_BASE = "https://api.stripe.com"
    PORTAL_CSP["form-action"] += (
        ["https://checkout.stripe.com", "https://billing.stripe.com"]
        if PORTAL_STRIPE_API_BASE == _STRIPE_DEFAULT_BASE
        else [PORTAL_STRIPE_API_BASE]
    )

# Django's debug pages list settings and each frame's locals: the project filter hides secrets there even with DEBUG on.
DEFAULT_EXCEPTION_REPORTER_FILTER = "portal_project.security.SecretsFilter"
DEFAULT_EXCEPTION_REPORTER = "portal_project.security.SecretsReporter"

# --- The rest -----------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("PORTAL_STATIC_ROOT") or BASE_DIR / "staticfiles")
STATICFILES_DIRS = [BASE_DIR / "static"]  # the portal's own CSS and JS, as portal/portal.css and portal/portal.js
# Served by WhiteNoise (the middleware above). In production, `collectstatic` (at the image's build, or by
# deploy/entrypoint.sh on a host) writes every file under a content-hashed name with a gzip copy and a
# manifest; `{% static %}` then links the hashed name, which WhiteNoise serves as cacheable for good. That storage
# raises for a file missing from the manifest, so without a `collectstatic` (DEBUG: `make run`; the test suite, see
# test_settings.py) the plain storage links the files by their own names and WhiteNoise finds them in the apps.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

REST_FRAMEWORK = {
    # The session first (its anonymous refusal stays a 403 for browsers), then organization admin keys (cta_…) for
    # scripts: portal.authentication.AdminKeyAuthentication.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "portal.authentication.AdminKeyAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON nested deeper than portal_project.security.JSON_MAX_DEPTH is a 400, never the decoder's RecursionError.
    "DEFAULT_PARSER_CLASSES": [
        "portal_project.security.BoundedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    # DRF's own, plus a body over DATA_UPLOAD_MAX_MEMORY_SIZE as a 413 (too many form fields a 400) in its error shape.
    "EXCEPTION_HANDLER": "portal_project.security.api_exception_handler",
}

LOG_FORMAT = env_str("LOG_FORMAT", "json")
if LOG_FORMAT not in {"json", "plain"}:
    fail("LOG_FORMAT", f"must be 'json' or 'plain', got {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "gateway.logs.RequestIdFilter"}},
    "formatters": {
        "json": {"()": "gateway.logs.JsonFormatter"},
        "plain": {
            "()": "gateway.logs.PlainFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s request_id=%(request_id)s",
        },
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["request_id"]}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.request": {"level": "ERROR"},
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        # The SDK's INFO lines carry request details; its warnings and errors name no secret.
        "stripe": {"level": "WARNING"},
    },
}

# --- Portal: customer pages, management API, live usage feed -----------------------------------
# Kept in one block so the gateway and billing settings above stay untouched by portal work.
# usersessions records each sign-in (IP, browser), so the profile page can end all sessions but the current one.
# Its middleware only refreshes "last seen" (USERSESSIONS_TRACK_ACTIVITY), which costs a write per page: left out.
INSTALLED_APPS += ["allauth.usersessions", "allauth.mfa", "drf_spectacular"]
# allauth's own sessions page (/accounts/sessions/) loads the humanize tags: without the app it was a 500.
INSTALLED_APPS += ["django.contrib.humanize"]
ACCOUNT_ADAPTER = "portal.adapter.PortalAccountAdapter"
ACCOUNT_FORMS = {"login": "portal.forms.PortalLoginForm", "signup": "portal.forms.PortalSignupForm"}
ACCOUNT_EMAIL_SUBJECT_PREFIX = "[Cortensor] "
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_LOGOUT_REDIRECT_URL = "/accounts/login/"
LOGIN_URL = "/accounts/login/"
# allauth reads REMOTE_ADDR (its rate limits, usersessions): portal_project/proxies.py has already put the client
# there from X-Forwarded-For as far as PORTAL_TRUSTED_PROXY_COUNT trusts it. Reading the header again would trust it twice.
ALLAUTH_TRUSTED_PROXY_COUNT = 0
ALLAUTH_TRUSTED_CLIENT_IP_HEADER = None
# Rates in django-ratelimit's "N/period" form; each refusal is a 429.
PORTAL_RATELIMIT_SIGNIN = env_str("PORTAL_RATELIMIT_SIGNIN", "10/m")  # sign-in POSTs per IP
PORTAL_RATELIMIT_SIGNUP = env_str("PORTAL_RATELIMIT_SIGNUP", "20/h")  # sign-up POSTs per IP
PORTAL_RATELIMIT_KEY_CREATE = env_str("PORTAL_RATELIMIT_KEY_CREATE", "20/h")  # key creations per user
# Failed admin-key authentications per IP on the management API; past it, 429 before the key is looked at.
PORTAL_RATELIMIT_ADMIN_KEY_FAILURES = env_str("PORTAL_RATELIMIT_ADMIN_KEY_FAILURES", "10/m")
# Two-factor sign-in (allauth.mfa): TOTP authenticator apps with recovery codes, for anyone from the profile page.
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
MFA_TOTP_ISSUER = "Cortensor"
# The admin (/admin/) signs staff in through allauth's form; with this on, only a session that passed TOTP gets in,
# and a staff user without an authenticator is sent to set one up. On unless DEBUG: `make run` keeps a plain login.
PORTAL_ADMIN_REQUIRE_MFA = env_bool("PORTAL_ADMIN_REQUIRE_MFA", not DEBUG)
# An open live usage feed re-checks its session and membership this often (one query), besides closing at once when a
# sign-out, password change or removal pushes a recheck: the longest a feed outlives access the push missed.
PORTAL_LIVE_SESSION_CHECK_S = float(env_int("PORTAL_LIVE_SESSION_CHECK_MS", 2000, minimum=100)) / 1000
# An open live usage feed hands its page a newer cursor this often (one query), one interval after taking it: a page that
# reconnects catches up from there, so the catch-up rereads about this long of rows rather than all since it opened.
PORTAL_LIVE_CURSOR_REFRESH_S = float(env_int("PORTAL_LIVE_CURSOR_REFRESH_MS", 30000, minimum=100)) / 1000
# Mail: the console by default, SMTP as soon as EMAIL_HOST is set, or any backend named in EMAIL_BACKEND.
EMAIL_HOST = env_str("EMAIL_HOST")
if EMAIL_HOST and not env_str("EMAIL_BACKEND"):
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
EMAIL_PORT = env_int("EMAIL_PORT", 587, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", EMAIL_PORT == 587)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    fail("EMAIL_USE_SSL", "EMAIL_USE_TLS and EMAIL_USE_SSL cannot both be on")
EMAIL_FILE_PATH = env_str("EMAIL_FILE_PATH") or None
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Cortensor <no-reply@cortensor.local>")
# Where a customer writes when a mail does not arrive: shown on the e-mail verification page (and in security mails).
PORTAL_SUPPORT_EMAIL = env_str("PORTAL_SUPPORT_EMAIL")
if PORTAL_SUPPORT_EMAIL and ("@" not in PORTAL_SUPPORT_EMAIL or any(c.isspace() for c in PORTAL_SUPPORT_EMAIL)):
    fail("PORTAL_SUPPORT_EMAIL", f"must be one e-mail address, got {PORTAL_SUPPORT_EMAIL!r}")
# Security notices by mail (allauth): password changed or set, an address added, removed or changed.
ACCOUNT_EMAIL_NOTIFICATIONS = True
REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"] = "drf_spectacular.openapi.AutoSchema"
SPECTACULAR_SETTINGS = {
    "TITLE": "Cortensor portal management API",
    "DESCRIPTION": "Keys and usage of your organization. From a script: an organization admin key "
    "(`Authorization: Bearer cta_…`, made by an owner or admin on the API keys page), acting as its organization only. "
    "From the portal: the session, with a CSRF token on writes. The inference API itself (/v1) is described on the "
    "docs page; admin keys are never accepted there.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
}
