"""`make run`: migrate the embedded database, create a demo org, user and key, start the router simulator and the gateway."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run"
KEY_FILE = RUN_DIR / "demo_key"
SIM_PORT = int(os.environ.get("SIM_PORT", "5010"))
PORT = int(os.environ.get("PORT", "8000"))
DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "demo-password-123"  # a laptop demo account; never deploy with it


def dev_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DEBUG", "1")
    env.setdefault("LOG_FORMAT", "plain")
    env.setdefault("PORTAL_ROUTER_POOLS_JSON", json.dumps({"oss-20b": f"http://127.0.0.1:{SIM_PORT}"}))
    env.setdefault("PORTAL_ROUTER_MODEL_SESSIONS_JSON", json.dumps({"oss-20b": [101, 102]}))
    env.setdefault("PORTAL_ROUTER_MODEL_AUTH_KEYS_JSON", json.dumps({"oss-20b": "default-dev-token"}))
    env.setdefault("PORTAL_DEFAULT_MODEL", "oss-20b")
    env.setdefault("PORTAL_PUBLIC_BASE_URL", f"http://127.0.0.1:{PORT}")
    return env


def manage(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"manage.py {' '.join(args)} failed")
    return result.stdout.strip()


SETUP_DEMO = f"""
from accounts.models import Organization, User
from accounts.services import user_get_or_create
from billing.services import organization_create
from apikeys.keys import split_key
from apikeys.models import ApiKey
from apikeys.services import apikey_create
from pathlib import Path

user, created = user_get_or_create(email={DEMO_EMAIL!r})
if created or not user.has_usable_password():
    user.set_password({DEMO_PASSWORD!r}); user.save()
from allauth.account.models import EmailAddress
EmailAddress.objects.get_or_create(user=user, email=user.email, defaults={{"verified": True, "primary": True}})
org = Organization.objects.filter(slug="demo").first() or organization_create(slug="demo", name="Demo", owner=user)
path = Path({str(KEY_FILE)!r})
raw = path.read_text().strip() if path.exists() else ""
public_id = split_key(raw) if raw else None
valid = public_id and ApiKey.objects.filter(public_id=public_id, organization=org, revoked_at__isnull=True).exists()
if not valid:
    raw = apikey_create(organization=org, name="demo key", actor_label="make run").raw
    path.parent.mkdir(exist_ok=True); path.write_text(raw); path.chmod(0o600)
print(raw)
"""


def mail_note(env: dict[str, str]) -> str:
    """The banner's line on where mail goes: with the console backend (the default) sign-up links land here."""
    backend = env.get("EMAIL_BACKEND") or ("" if env.get("EMAIL_HOST") else "django.core.mail.backends.console.EmailBackend")
    if backend == "django.core.mail.backends.console.EmailBackend":
        return "  mail (sign-up confirmations, invitations) is printed in this terminal, not sent\n"
    return ""


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError as exc:
            if getattr(exc, "code", None):  # an HTTP error status still means it is up
                return
            time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


def main() -> None:
    env = dev_env()
    RUN_DIR.mkdir(exist_ok=True)
    print("migrating the embedded database …", flush=True)
    manage("migrate", "--noinput", env=env)
    manage("sync_router_pools", env=env)
    key = manage("shell", "-c", SETUP_DEMO, env=env).splitlines()[-1]
    sim = subprocess.Popen(
        [sys.executable, "-m", "simulator", "--port", str(SIM_PORT), "--auth-key", "default-dev-token", "--token-delay-ms", "20"],
        cwd=ROOT,
        env=env,
    )
    wait_http(f"http://127.0.0.1:{SIM_PORT}/api/v1/status")
    server = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(PORT), "portal_project.asgi:application"],
        cwd=ROOT,
        env=env,
    )
    wait_http(f"http://127.0.0.1:{PORT}/health")
    base = f"http://127.0.0.1:{PORT}"
    print(
        f"""
Cortensor gateway on {base}  (router simulator on http://127.0.0.1:{SIM_PORT})
  admin and portal login: {DEMO_EMAIL} / {DEMO_PASSWORD}   ({base}/admin/ needs `python manage.py createsuperuser`)
  demo API key: {key}
{mail_note(env)}
Try it:
  curl {base}/v1/chat/completions -H "Authorization: Bearer {key}" -H 'Content-Type: application/json' \\
    -d '{{"model": "oss-20b", "messages": [{{"role": "user", "content": "Summarize Cortensor in one sentence."}}], "max_tokens": 48}}'

Ctrl-C stops both.
""",
        flush=True,
    )

    def stop(*_: object) -> None:
        for proc in (server, sim):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (server, sim):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while server.poll() is None and sim.poll() is None:
        time.sleep(0.5)
    stop()


if __name__ == "__main__":
    main()
