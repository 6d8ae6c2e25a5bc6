"""Make docs/usage-page.png, the README's picture of the portal's usage page, from scratch and reproducibly; with
--all, also a screenshot of every portal page at desktop and phone width, and docs/first-run-checklist.png.

    .venv/bin/python docs/make_screenshot.py [--width 1280] [--output docs/usage-page.png]
    .venv/bin/python docs/make_screenshot.py --all artifacts/screenshots [--database portal_screenshot_me]

What it does: creates a fresh PostgreSQL database `portal_screenshot` (postgres@127.0.0.1:5432, trust auth;
dropped first if it is left over), migrates it, seeds one organization ("Acme Robotics", pro plan) with a verified
owner, two model aliases, three API keys and two weeks of realistic usage (a seeded random generator, so every run
draws the same traffic shape relative to today), starts daphne on a free port, signs in through the real login form
in Debian's Chromium, and saves a full-page screenshot of /portal/usage at 1280x900. With --all DIR it saves, at
1280 and 390 px, every page a signed-out visitor and the owner see (DIR/<width>-<page>.png), and the first-run
checklist of a second, brand-new organization (one key, no request yet) to DIR and to docs/first-run-checklist.png.
Daphne is stopped and the database dropped afterwards, whatever happens. --database names the throwaway database,
so two people on one PostgreSQL server do not drop each other's.

Needs: the project's venv (Django, daphne, Playwright's Python package), PostgreSQL on 127.0.0.1:5432 and
/usr/bin/chromium. It touches no other database and writes only docs/usage-page.png (and, with --all, DIR and
docs/first-run-checklist.png).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "usage-page.png"
CHECKLIST_OUTPUT = ROOT / "docs" / "first-run-checklist.png"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
SIGNED_OUT_PAGES = ["/accounts/login/", "/accounts/signup/", "/accounts/password/reset/"]
SIGNED_IN_PAGES = [
    "/portal/usage",
    "/portal/api-keys",
    "/portal/playground",
    "/portal/docs",
    "/portal/billing",
    "/portal/organization",
    "/portal/profile",
    "/accounts/email/",
    "/accounts/password/change/",
]
NEW_EMAIL = "sam@nova-labs.example"  # the brand-new organization of the first-run checklist

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DB_NAME = "portal_screenshot"
DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"

EMAIL = "maya@acme-robotics.example"
PASSWORD = "screenshot-only-pass-4821"  # a throwaway account in a throwaway database
SEED = 20_240_611  # fixed: the same traffic shape on every run

DAYS = 14  # the usage page's default range
LATEST_LOGS = 300  # the newest events also get a RequestLog row, as the gateway writes them

# name, share of traffic on weekdays, on weekends, model mix (oss-20b share), client
KEYS = [
    ("production backend", 0.62, 0.80, 0.74, ("10.0.4.21", "OpenAI/Python 1.54.4")),
    ("staging", 0.22, 0.12, 0.50, ("10.0.8.3", "OpenAI/Python 1.54.4")),
    ("notebook", 0.16, 0.08, 0.35, ("203.0.113.45", "python-httpx/0.27.2")),
]
MODELS = {
    # alias: display name, pool, endpoints, typical time to first byte (ms), ms per generated token
    "oss-20b": ("gpt-oss 20B", "oss-pool", ["http://10.20.0.11:5010", "http://10.20.0.12:5010"], 170, 17.0),
    "gemma4": ("Gemma 4", "gemma-pool", ["http://10.20.1.21:5010"], 240, 26.0),
}
ROUTES = [
    ("chat.completions", "/v1/chat/completions", 0.72),
    ("messages", "/v1/messages", 0.18),
    ("completions", "/v1/completions", 0.10),
]
ERRORS = [  # http status, error code, weight
    (502, "upstream_error", 0.40),
    (503, "upstream_unavailable", 0.25),
    (429, "rate_limit_exceeded", 0.25),
    (400, "invalid_value", 0.10),
]


def log(message: str) -> None:
    print(f"[make_screenshot] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _use_database(name: str) -> None:
    global DB_NAME, DATABASE_URL
    if not name.replace("_", "").isalnum():
        raise SystemExit(f"--database: letters, digits and _ only, got {name!r}")
    DB_NAME = name
    DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"


def server_env() -> dict[str, str]:
    """This process's environment without anything that points elsewhere (another database, Redis, real routers)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PORTAL_", "DJANGO_", "EMAIL_")) and k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG"}
    }
    env.update(
        {
            "DATABASE_URL": DATABASE_URL,
            "SECRET_KEY": "screenshot-secret-key-not-for-anything-else",
            "PORTAL_API_KEY_PEPPER": "screenshot-pepper",
            "DEBUG": "1",
            "LOG_FORMAT": "plain",
            "LOG_LEVEL": "WARNING",
            "DJANGO_SETTINGS_MODULE": "portal_project.settings",
            "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",  # the seed's notices go nowhere
        }
    )
    return env


# --- the database -------------------------------------------------------------------------------


def admin_sql(statement: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(statement)


def create_database() -> None:
    admin_sql(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    admin_sql(f'CREATE DATABASE "{DB_NAME}"')


def drop_database() -> None:
    try:
        from django.db import connections

        connections.close_all()
    except Exception:  # noqa: BLE001 - Django may never have been set up
        pass
    admin_sql(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')


def migrate(env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit("manage.py migrate failed")


# --- the data -------------------------------------------------------------------------------------


def hour_weight(hour: float) -> float:
    """Traffic over a UTC day: a quiet night, a morning ramp, a broad afternoon peak (Europe and the US overlap)."""
    return 0.18 + math.exp(-(((hour - 15.0) / 4.2) ** 2)) + 0.35 * math.exp(-(((hour - 9.5) / 2.0) ** 2))


HOUR_WEIGHTS = [hour_weight(h + 0.5) for h in range(24)]


def day_volume(rng: random.Random, day_index: int, weekday: int) -> int:
    """Requests on a whole day: weekdays busy, weekends quiet, a slow upward trend."""
    base = {5: 95, 6: 80}.get(weekday, 305)
    if weekday == 0:
        base = 275  # Mondays start slow
    trend = 1.0 + 0.022 * day_index
    return int(base * trend * rng.uniform(0.9, 1.1))


def pick(rng: random.Random, options: list, weights: list[float]):  # noqa: ANN201
    return rng.choices(options, weights=weights, k=1)[0]


def seed_data() -> None:
    """Everything the page shows, written with the ORM (Django set up in this process against the new database)."""
    import django

    django.setup()

    from allauth.account.models import EmailAddress
    from django.db import transaction
    from django.utils import timezone

    from accounts.models import Organization, User
    from apikeys.models import ApiKey
    from apikeys.services import apikey_create
    from billing.services import organization_create, plans_seed_defaults
    from routerpools.models import ModelAlias, RouterEndpoint, RouterPool, RouterSession
    from usage.models import RequestLog, UsageEvent

    rng = random.Random(SEED)
    now = timezone.now().astimezone(UTC).replace(microsecond=0)
    today = now.date()
    first_day = today - timedelta(days=DAYS - 1)

    with transaction.atomic():
        plans_seed_defaults()
        user = User.objects.create_user(email=EMAIL, password=PASSWORD, name="Maya Okafor")
        EmailAddress.objects.create(user=user, email=EMAIL, verified=True, primary=True)
        org = organization_create(slug="acme-robotics", name="Acme Robotics", plan_slug="pro", owner=user)

        for alias, (display, pool_name, endpoints, _ttfb, _per_token) in MODELS.items():
            pool = RouterPool.objects.create(name=pool_name)
            for url in endpoints:
                RouterEndpoint.objects.create(pool=pool, base_url=url, auth_key="screenshot-router-key")
            for sid in (101, 102):
                RouterSession.objects.create(pool=pool, session_id=sid)
            ModelAlias.objects.create(alias=alias, display_name=display, pool=pool)

        keys = []
        for age_days, (name, *_rest) in zip((41, 23, 9), KEYS, strict=True):
            key = apikey_create(organization=org, name=name, created_by=user).api_key
            ApiKey.objects.filter(pk=key.pk).update(created_at=now - timedelta(days=age_days, hours=rng.randint(1, 9)))
            keys.append(key)

    # Two weeks of traffic.
    events: list[UsageEvent] = []
    # An upstream hiccup on a recent weekday: a burst of 502/503s for half an hour.
    incident_day = next(i for i in range(DAYS - 4, 0, -1) if (first_day + timedelta(days=i)).weekday() < 5)
    for day_index in range(DAYS):
        day = first_day + timedelta(days=day_index)
        weekday = day.weekday()
        weekend = weekday >= 5
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        for _ in range(day_volume(rng, day_index, weekday)):
            hour = pick(rng, list(range(24)), HOUR_WEIGHTS)
            at = midnight + timedelta(hours=hour, seconds=rng.uniform(0, 3600))
            if at > now - timedelta(seconds=20):
                continue  # today is only partly over
            events.append(make_event(rng, at, keys, org.pk, weekend=weekend))
        if day_index == incident_day:
            start = midnight + timedelta(hours=14, minutes=12)
            for _ in range(rng.randint(22, 30)):
                at = start + timedelta(seconds=rng.uniform(0, 1800))
                event = make_event(rng, at, keys, org.pk, weekend=weekend)
                fail(rng, event, status=pick(rng, [502, 503], [0.6, 0.4]))
                events.append(event)

    # The 25 rows of the latest-requests table: all answered but one stream the client hung up on. A failure's
    # badge ("502 · upstream_error") would widen the table's Status column by ~120 px, pushing Tokens and Latency
    # out of view even at 1440 px; failures show in the charts' red caps and the Failed total instead.
    events.sort(key=lambda e: e.created_at)
    for i in range(len(events) - 25, len(events)):
        old = events[i]
        if old.status != "ok":
            events[i] = make_event(rng, old.created_at, keys, org.pk, weekend=False, outcome="ok")
    hung_up = events[-4]
    hung_up.status, hung_up.http_status, hung_up.streamed, hung_up.route = "cancelled", 200, True, "chat.completions"
    hung_up.completion_tokens = rng.randint(20, 90)
    hung_up.total_tokens = hung_up.prompt_tokens + hung_up.completion_tokens
    hung_up.duration_ms = int(hung_up.ttfb_ms + hung_up.completion_tokens * MODELS[hung_up.alias][4])
    hung_up.upstream_latency_ms = hung_up.duration_ms - 4

    logs = [
        RequestLog(
            request_id=e.request_id,
            organization_id=e.organization_id,
            method="POST",
            path=next(path for route, path, _w in ROUTES if route == e.route),
            client_ip=CLIENTS[e.api_key_id][0],
            user_agent=CLIENTS[e.api_key_id][1] if e.route != "messages" else "Anthropic/Python 0.39.0",
            status=e.http_status,
            duration_ms=e.duration_ms + rng.randint(0, 2),
            created_at=e.created_at,
        )
        for e in events[-LATEST_LOGS:]
    ]

    with transaction.atomic():
        UsageEvent.objects.bulk_create(events, batch_size=1000)
        RequestLog.objects.bulk_create(logs, batch_size=1000)
        for key in keys:
            last = max((e.created_at for e in events if e.api_key_id == key.pk), default=None)
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=last)
    by_status = {s: sum(1 for e in events if e.status == s) for s in ("ok", "error", "cancelled")}
    log(f"seeded {len(events)} usage events {by_status}, {len(logs)} request logs, org id {org.pk}")
    assert Organization.objects.filter(slug="acme-robotics").exists()

    # A second, brand-new organization: a confirmed owner and one key, no request yet (the first-run checklist).
    newcomer = User.objects.create_user(email=NEW_EMAIL, password=PASSWORD, name="Sam Rivera")
    EmailAddress.objects.create(user=newcomer, email=NEW_EMAIL, verified=True, primary=True)
    nova = organization_create(slug="nova-labs", name="Nova Labs", plan_slug="free", owner=newcomer)
    apikey_create(organization=nova, name="laptop", created_by=newcomer)


CLIENTS: dict[int, tuple[str, str]] = {}


def make_event(rng: random.Random, at: datetime, keys: list, organization_id: int, *, weekend: bool, outcome: str = ""):  # noqa: ANN001, ANN201
    from usage.models import UsageEvent

    shares = [k[2] if weekend else k[1] for k in KEYS]
    index = pick(rng, [0, 1, 2], shares)
    name, _wd, _we, oss_share, client = KEYS[index]
    key = keys[index]
    CLIENTS[key.pk] = client
    alias = "oss-20b" if rng.random() < oss_share else "gemma4"
    _display, pool, endpoints, ttfb_typical, per_token = MODELS[alias]
    route = pick(rng, [r[0] for r in ROUTES], [r[2] for r in ROUTES])
    streamed = rng.random() < (0.1 if route == "completions" else 0.45)

    long_prompts = name == "notebook"
    prompt = int(min(14_000, max(14, rng.lognormvariate(math.log(1400 if long_prompts else 520), 0.85))))
    completion = int(min(2048, max(3, rng.lognormvariate(math.log(260), 0.75))))
    ttfb = int(rng.lognormvariate(math.log(ttfb_typical + prompt * 0.02), 0.3))
    upstream = int(ttfb + completion * per_token * rng.uniform(0.85, 1.2))
    event = UsageEvent(
        request_id=f"req_{rng.getrandbits(96):024x}",
        organization_id=organization_id,
        api_key_id=key.pk,
        alias=alias,
        pool=pool,
        endpoint_url=rng.choice(endpoints),
        session_id=rng.choice([101, 102]),
        route=route,
        streamed=streamed,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        status="ok",
        http_status=200,
        upstream_latency_ms=upstream,
        ttfb_ms=ttfb + rng.randint(2, 9),
        duration_ms=upstream + rng.randint(3, 14),
        created_at=at,
    )
    roll = 1.0 if outcome == "ok" else rng.random()
    if roll < 0.016:
        fail(rng, event, status=pick(rng, [e[0] for e in ERRORS], [e[2] for e in ERRORS]))
    elif roll < 0.026:
        event.status = "cancelled"
        if streamed and rng.random() < 0.7:  # the client hung up mid-stream: what was sent still counts
            event.completion_tokens = rng.randint(5, max(6, completion // 2))
            event.total_tokens = event.prompt_tokens + event.completion_tokens
            event.duration_ms = int(event.ttfb_ms + event.completion_tokens * per_token)
            event.upstream_latency_ms = event.duration_ms - 4
        else:  # before any answer: nginx's 499
            event.http_status = 499
            event.prompt_tokens = event.completion_tokens = event.total_tokens = 0
            event.ttfb_ms = event.upstream_latency_ms = None
            event.duration_ms = rng.randint(400, 6000)
    return event


def fail(rng: random.Random, event, *, status: int) -> None:  # noqa: ANN001
    code = next(c for s, c, _w in ERRORS if s == status)
    event.status, event.http_status, event.error_code = "error", status, code
    event.prompt_tokens = event.completion_tokens = event.total_tokens = 0
    event.ttfb_ms = None
    if status == 502:
        event.upstream_latency_ms = rng.randint(800, 9000)
        event.duration_ms = event.upstream_latency_ms + rng.randint(3, 12)
    else:  # refused before an upstream was asked
        event.upstream_latency_ms = None
        event.duration_ms = rng.randint(1, 6)
    event.streamed = event.streamed and status == 502


# --- the server and the browser ------------------------------------------------------------------


class Daphne:
    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**env, "PORTAL_PUBLIC_BASE_URL": self.url}
        self.process: subprocess.Popen | None = None
        fd, name = tempfile.mkstemp(prefix="daphne-screenshot-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)

    def start(self) -> Daphne:
        import httpx

        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "daphne",
                    "-v",
                    "0",
                    "-b",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "portal_project.asgi:application",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daphne exited early:\n{self.log_path.read_text(errors='replace')}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code in (200, 503):
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"daphne did not answer /health in time:\n{self.log_path.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_path.unlink(missing_ok=True)


def take_screenshot(server: Daphne, *, output: Path = OUTPUT, viewport: dict[str, int] = VIEWPORT) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=viewport, device_scale_factor=1, locale="en-US", timezone_id="UTC")
            page = context.new_page()
            page.goto(f"{server.url}/accounts/login/")
            page.fill("input[name=login]", EMAIL)
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{server.url}/portal/api-keys")

            page.goto(f"{server.url}/portal/usage")
            page.wait_for_load_state("networkidle")
            # The charts are server-drawn SVG: wait for their bars and the tables, and for the live feed to connect.
            page.wait_for_selector(".chart svg rect.bar")
            page.wait_for_function(f"document.querySelectorAll('.chart svg rect.bar').length >= {2 * DAYS}")
            page.wait_for_selector("#latest tbody tr[data-request-id]")
            page.wait_for_selector("#live-status[data-state=open]", timeout=10_000)
            page.evaluate("document.fonts.ready")
            page.mouse.move(0, 0)
            page.wait_for_timeout(300)
            page.screenshot(path=str(output), full_page=True, animations="disabled", caret="hide")
            context.close()
        finally:
            browser.close()


def _sign_in(page, server: Daphne, email: str) -> None:  # noqa: ANN001
    page.goto(f"{server.url}/accounts/login/")
    page.fill("input[name=login]", email)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/portal/api-keys")


def _settle(page) -> None:  # noqa: ANN001
    page.wait_for_load_state("networkidle")
    page.evaluate("document.fonts.ready")
    page.mouse.move(0, 0)
    page.wait_for_timeout(200)


def take_all_screenshots(server: Daphne, *, directory: Path) -> list[Path]:
    """Every page at desktop and phone width, and the new organization's checklist; the paths written."""
    from playwright.sync_api import sync_playwright

    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(page, name: str) -> None:  # noqa: ANN001
        _settle(page)
        path = directory / f"{name}.png"
        page.screenshot(path=str(path), full_page=True, animations="disabled", caret="hide")
        written.append(path)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for viewport in (VIEWPORT, PHONE):
                width = viewport["width"]
                options = {"is_mobile": True, "has_touch": True} if viewport is PHONE else {}
                context = browser.new_context(
                    viewport=viewport, device_scale_factor=1, locale="en-US", timezone_id="UTC", **options
                )
                page = context.new_page()
                for path in SIGNED_OUT_PAGES:
                    page.goto(f"{server.url}{path}")
                    save(page, f"{width}-{path.strip('/').replace('/', '-')}")
                _sign_in(page, server, EMAIL)
                for path in SIGNED_IN_PAGES:
                    page.goto(f"{server.url}{path}")
                    save(page, f"{width}-{path.strip('/').replace('/', '-')}")
                context.close()
                context = browser.new_context(
                    viewport=viewport, device_scale_factor=1, locale="en-US", timezone_id="UTC", **options
                )
                page = context.new_page()
                _sign_in(page, server, NEW_EMAIL)
                page.goto(f"{server.url}/portal/")
                save(page, f"{width}-first-run-checklist")
                if viewport is VIEWPORT:
                    page.screenshot(path=str(CHECKLIST_OUTPUT), full_page=True, animations="disabled", caret="hide")
                    written.append(CHECKLIST_OUTPUT)
                context.close()
        finally:
            browser.close()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--width", type=int, default=VIEWPORT["width"], help="viewport width in CSS pixels (default %(default)s)")
    parser.add_argument(
        "--height", type=int, default=VIEWPORT["height"], help="viewport height (default %(default)s); the shot is full-page"
    )
    parser.add_argument("--output", type=Path, default=OUTPUT, help="where to write the PNG (default docs/usage-page.png)")
    parser.add_argument("--all", type=Path, metavar="DIR", help="also every page at 1280 and 390 px into DIR, and the checklist")
    parser.add_argument("--database", default=DB_NAME, help="the throwaway database's name (default %(default)s)")
    args = parser.parse_args()
    _use_database(args.database)
    output = args.output.resolve()
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"needs Debian's Chromium at {CHROMIUM} (apt-get install chromium)")
    env = server_env()
    # Django in this process reads the same settings as the server: set before anything imports it.
    for name in [k for k in os.environ if k not in env]:
        del os.environ[name]
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)

    log(f"creating database {DB_NAME}")
    create_database()
    server: Daphne | None = None
    try:
        log("migrating")
        migrate(env)
        seed_data()
        server = Daphne(env).start()
        log(f"daphne on {server.url}")
        take_screenshot(server, output=output, viewport={"width": args.width, "height": args.height})
        log(f"wrote {output}")
        if args.all is not None:
            for path in take_all_screenshots(server, directory=args.all.resolve()):
                log(f"wrote {path} ({path.stat().st_size // 1024} KB)")
    finally:
        if server is not None:
            server.stop()
        drop_database()
        log(f"dropped {DB_NAME}")


if __name__ == "__main__":
    main()
