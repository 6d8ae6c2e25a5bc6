"""Attacks on the edges of a live daphne gateway: bodies over the limit, slow clients, idle connections.

Everything here speaks raw HTTP over sockets, the way a hostile client would, against the same daphne
process production runs (tests/conftest.py `gateway`), or a gateway of the test's own when it needs
small deadlines. A wait that runs out fails the test with what was (not) seen.
"""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import json
import re
import secrets
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest

from simulator import SimulatorServer
from tests.conftest import METRICS_TOKEN, IssuedKey, LiveGateway, live_gateway_env, wait_for, wait_until_gateway_caught_up
from tests.portal_support import PASSWORD
from tests.support.traffic import CHAT, ENVELOPE, MESSAGES, body_for, headers_for, stream_completed

pytest_plugins = ["tests.support.fixtures"]

LIMIT = 1_048_576  # PORTAL_MAX_BODY_BYTES of the shared gateway (the default)
REQUEST_ID = re.compile(r"^req_[0-9a-f]{24}$")
HUGE = 300 * 1024 * 1024


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def connect(gateway: LiveGateway, timeout: float = 10) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def head(method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_answer(sock: socket.socket, *, method: str = "POST", timeout: float = 10) -> Answer:
    """One HTTP response from the socket; a timeout fails the test (socket.timeout propagates)."""
    sock.settimeout(timeout)
    response = http.client.HTTPResponse(sock, method=method)
    response.begin()
    body = response.read()
    return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, body)


def closed_by_server(sock: socket.socket, timeout: float = 10) -> bool:
    """True when the server closed the connection (EOF or reset) within `timeout`; False when it stayed open."""
    sock.settimeout(timeout)
    try:
        return sock.recv(65536) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def assert_too_large_in_shape(path: str, answer: Answer) -> None:
    assert answer.status == 413, answer
    rid = answer.headers.get("x-request-id", "")
    assert REQUEST_ID.match(rid), answer.headers
    assert answer.headers.get("connection", "").lower() == "close", answer.headers
    message = f"request body is larger than {LIMIT} bytes"
    if path.startswith("/v1/messages"):
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["request-id"] == rid
        assert answer.json() == {"type": "error", "error": {"type": "request_too_large", "message": message}, "request_id": rid}
    elif path == ENVELOPE:
        assert answer.headers["content-type"] == "application/json"
        assert answer.json() == {
            "request_id": rid,
            "status": "failed",
            "model": None,
            "router_pool": None,
            "data": None,
            "error": {"code": "invalid_request", "message": message, "details": None},
        }
    elif path.startswith("/v1/") or path == "/v1":
        assert answer.headers["content-type"] == "application/json"
        assert answer.json() == {
            "error": {"message": message, "type": "invalid_request_error", "param": None, "code": "request_too_large"}
        }
    else:
        assert answer.headers["content-type"].startswith("text/plain"), answer.headers
        assert str(LIMIT).encode() in answer.body and len(answer.body) < 300


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def send_chunked_until_refused(gateway: LiveGateway, path: str, total: int, *, chunk: int = 65536) -> tuple[int, Answer | None]:
    """Streams up to `total` bytes as a chunked body; stops when the server answers or hangs up.

    Returns the bytes the socket accepted and the answer, if one came.
    """
    sock = connect(gateway)
    sock.sendall(head("POST", path, "Content-Type: application/json", "Transfer-Encoding: chunked"))
    frame = f"{chunk:x}\r\n".encode() + b"x" * chunk + b"\r\n"
    sent = 0
    pending = b""
    deadline = time.monotonic() + 60
    try:
        while sent < total:
            assert time.monotonic() < deadline, f"the server neither read nor refused: {sent} bytes sent"
            readable, writable, _ = select.select([sock], [sock], [], 5)
            if readable:
                break
            if writable:
                if not pending:
                    pending = frame
                n = sock.send(pending)
                pending = pending[n:]
                sent += n
        else:
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    try:
        answer = read_answer(sock, timeout=10)
    except (ConnectionResetError, http.client.RemoteDisconnected):
        answer = None
    sock.close()
    return sent, answer


# --- bodies over the limit ------------------------------------------------------------------------------------------------

REFUSED_PATHS = [
    CHAT,
    MESSAGES,
    "/v1/messages/count_tokens",
    ENVELOPE,
    "/v1/models",
    "/v1/no-such-route",
    "/accounts/login/",
    "/admin/login/",
    "/portal/api-keys",
    "/health",
]


@pytest.mark.parametrize("path", REFUSED_PATHS)
def test_a_declared_body_over_the_limit_is_refused_before_any_of_it_is_sent(gateway: LiveGateway, path: str) -> None:
    sock = connect(gateway)
    sock.sendall(head("POST", path, "Content-Type: application/json", f"Content-Length: {HUGE}"))
    answer = read_answer(sock)  # nothing of the body was sent: an answer at all means it was refused on the head
    assert_too_large_in_shape(path, answer)
    assert closed_by_server(sock)
    sock.close()
    access = [json.loads(line) for line in gateway.log().splitlines() if answer.headers["x-request-id"] in line]
    assert [(line["logger"], line["path"], line["status"]) for line in access] == [("access", path, 413)]


def test_a_refusal_comes_before_100_continue(gateway: LiveGateway) -> None:
    sock = connect(gateway)
    sock.sendall(head("POST", CHAT, "Content-Type: application/json", f"Content-Length: {HUGE}", "Expect: 100-continue"))
    answer = read_answer(sock)
    assert_too_large_in_shape(CHAT, answer)
    assert closed_by_server(sock)
    sock.close()


def test_a_body_that_says_it_fits_and_does_not_is_cut_at_the_limit(gateway: LiveGateway, api_key: IssuedKey) -> None:
    # The declared length is believed up to the limit: what comes after it is the next request's head.
    body = json.dumps(body_for(CHAT)).encode()
    sock = connect(gateway)
    sock.sendall(
        head(
            "POST", CHAT, "Content-Type: application/json", f"Authorization: Bearer {api_key.raw}", f"Content-Length: {len(body)}"
        )
        + body
        + b"x" * (2 * LIMIT)
    )
    assert read_answer(sock).status == 200
    sock.close()


@pytest.mark.parametrize("path", [CHAT, MESSAGES, ENVELOPE, "/accounts/login/"])
def test_a_chunked_body_is_stopped_once_it_passes_the_limit(gateway: LiveGateway, path: str) -> None:
    total = 50 * 1024 * 1024
    sent, answer = send_chunked_until_refused(gateway, path, total)
    # The server stopped reading near the limit: what the socket took beyond it sits in the kernel's buffers.
    assert sent < total / 4, f"{sent} bytes were read before the refusal"
    assert answer is not None, "the connection was reset before the 413 could be read"
    assert_too_large_in_shape(path, answer)


def test_anonymous_uploads_do_not_grow_the_server(gateway: LiveGateway) -> None:
    pid = gateway.process.pid
    send_chunked_until_refused(gateway, CHAT, 4 * LIMIT)  # warm-up: the refusal's code path is loaded
    before = rss_kb(pid)
    for path in (CHAT, MESSAGES, "/accounts/login/"):
        sent, answer = send_chunked_until_refused(gateway, path, 50 * 1024 * 1024)
        assert answer is not None and answer.status == 413
    grown = rss_kb(pid) - before
    assert grown < 8 * 1024, f"RSS grew by {grown} kB"


def test_a_malformed_form_body_reaches_the_gateway_and_gets_its_shape(gateway: LiveGateway, api_key: IssuedKey) -> None:
    # Twisted used to parse multipart bodies itself (for nothing: daphne passes the raw body on) and answer a bad one
    # with a bare HTML 400 before the application saw the request.
    response = httpx.post(
        f"{gateway.url}{CHAT}",
        content=b"--x\r\nnot a part\r\n",
        timeout=10,
        headers={"authorization": f"Bearer {api_key.raw}", "content-type": "multipart/form-data"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert REQUEST_ID.match(response.headers["x-request-id"])


def test_normal_requests_on_one_connection_are_unaffected(gateway: LiveGateway, api_key: IssuedKey) -> None:
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        for path in (CHAT, MESSAGES, ENVELOPE):
            response = client.post(path, json=body_for(path), headers=headers_for(api_key.raw, path))
            assert response.status_code == 200, response.text
            streamed = client.post(path, json=body_for(path, stream=True), headers=headers_for(api_key.raw, path))
            assert streamed.status_code == 200 and stream_completed(path, streamed.text), streamed.text
        at_limit = json.dumps(body_for(CHAT)).encode()
        at_limit = at_limit[:-1] + b" " * (LIMIT - len(at_limit)) + b"}"
        response = client.post(
            CHAT, content=at_limit, headers={**headers_for(api_key.raw, CHAT), "content-type": "application/json"}
        )
        assert response.status_code == 200, response.text


def test_the_application_stops_reading_at_the_limit_on_its_own() -> None:
    # The second line, for a server without the first (the ASGI app called by another server): /v1 reads no further
    # than the limit and answers 413 in the route's shape, anonymous or not.
    from django.core.asgi import get_asgi_application

    from gateway.asgi import GatewayApplication

    chunk, chunks = 65536, 64
    reads: list[int] = []
    sent: list[dict] = []

    async def receive() -> dict:
        reads.append(1)
        return {"type": "http.request", "body": b"x" * chunk, "more_body": len(reads) < chunks}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": MESSAGES,
        "raw_path": MESSAGES.encode(),
        "root_path": "",
        "scheme": "http",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "client": ["127.0.0.1", 1],
        "server": None,
    }
    asyncio.run(GatewayApplication(get_asgi_application())(scope, receive, send))
    assert len(reads) == LIMIT // chunk + 1
    answer = Answer(
        sent[0]["status"],
        {k.decode().lower(): v.decode() for k, v in sent[0]["headers"]},
        b"".join(m.get("body", b"") for m in sent[1:]),
    )
    answer.headers["connection"] = "close"  # the server's business, not the application's
    assert_too_large_in_shape(MESSAGES, answer)


# --- slow clients and idle connections --------------------------------------------------------------------------------------

READ_DEADLINE_S = 2
KEEPALIVE_S = 3
SLOW = {"PORTAL_REQUEST_READ_TIMEOUT_S": str(READ_DEADLINE_S), "PORTAL_KEEPALIVE_TIMEOUT_S": str(KEEPALIVE_S)}


@pytest.fixture
def slow_gateway(start_gateway: Callable[..., LiveGateway]) -> LiveGateway:
    return start_gateway(**SLOW)


def drip(sock: socket.socket, data: bytes, *, every: float, give_up_after: float = 15) -> tuple[float, bytes | None]:
    """Sends `data` one byte at a time; returns (seconds until the server cut us off, what it answered)."""
    started = time.monotonic()
    for byte in data:
        readable, _, _ = select.select([sock], [], [], every)
        if readable:
            try:
                return time.monotonic() - started, sock.recv(65536)
            except ConnectionResetError:
                return time.monotonic() - started, None
        try:
            sock.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started, None
        assert time.monotonic() - started < give_up_after, "the server let a 1-byte drip go on"
    pytest.fail("the drip ran out before the server cut it off")


def test_a_client_dripping_its_request_head_is_cut_off_at_the_deadline(slow_gateway: LiveGateway) -> None:
    sock = connect(slow_gateway)
    headers = b"POST /v1/chat/completions HTTP/1.1\r\n" + b"".join(b"X-Drip-%d: %s\r\n" % (i, b"y" * 20) for i in range(50))
    elapsed, answered = drip(sock, headers, every=0.25)
    assert elapsed >= READ_DEADLINE_S - 0.2
    if answered:
        assert answered.startswith(b"HTTP/1.1 408 "), answered
    assert closed_by_server(sock)
    sock.close()


def test_a_client_dripping_its_body_is_cut_off_at_the_deadline(slow_gateway: LiveGateway) -> None:
    sock = connect(slow_gateway)
    sock.sendall(head("POST", CHAT, "Content-Type: application/json", "Content-Length: 1000"))
    elapsed, answered = drip(sock, b"{" + b" " * 999, every=0.25)
    assert elapsed >= READ_DEADLINE_S - 0.2
    assert answered is not None and answered.startswith(b"HTTP/1.1 408 "), answered
    status, _, rest = answered.partition(b"\r\n\r\n")
    assert b"x-request-id: req_" in status.lower()
    assert json.loads(rest)["error"]["code"] == "request_timeout"
    assert closed_by_server(sock)
    sock.close()


def test_a_client_dripping_the_first_line_is_cut_off_too(slow_gateway: LiveGateway) -> None:
    sock = connect(slow_gateway)
    elapsed, _ = drip(sock, b"POST /v1/chat/completions" + b"x" * 200, every=0.25)
    assert elapsed >= READ_DEADLINE_S - 0.2
    assert closed_by_server(sock)
    sock.close()


def test_an_idle_keep_alive_connection_is_closed(slow_gateway: LiveGateway) -> None:
    sock = connect(slow_gateway)
    sock.sendall(head("GET", "/v1/models"))
    assert read_answer(sock, method="GET").status == 401
    started = time.monotonic()
    assert closed_by_server(sock, timeout=KEEPALIVE_S + 10), "an idle keep-alive connection stayed open"
    assert time.monotonic() - started >= KEEPALIVE_S - 0.5
    sock.close()


def test_slow_answers_and_streams_outlive_the_read_deadline(
    slow_gateway: LiveGateway, routed: IssuedKey, sim: SimulatorServer
) -> None:
    # The deadline covers reading the request; the answer may take as long as the upstream takes.
    sim.configure(first_byte_delay_ms=int((KEEPALIVE_S + 0.5) * 1000))
    with httpx.Client(base_url=slow_gateway.url, timeout=30) as client:
        for path in (CHAT, MESSAGES):
            response = client.post(path, json=body_for(path), headers=headers_for(routed.raw, path))
            assert response.status_code == 200, response.text
            streamed = client.post(path, json=body_for(path, stream=True), headers=headers_for(routed.raw, path))
            assert streamed.status_code == 200 and stream_completed(path, streamed.text), streamed.text


def test_a_websocket_outlives_the_read_deadline_and_the_keep_alive_timeout(slow_gateway: LiveGateway) -> None:
    # The live usage feed is upgraded from an HTTP request: once upgraded, neither deadline applies to it.
    from tests.portal_support import make_org, make_user

    make_org("sockets", owner=make_user("sockets@example.com"))
    with httpx.Client(base_url=slow_gateway.url, timeout=20) as client:
        assert sign_in(client, "sockets@example.com", PASSWORD, forwarded="").status_code == 302
        cookie = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
    sock = connect(slow_gateway)
    sock.sendall(
        head(
            "GET",
            "/portal/ws/usage",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            f"Origin: http://127.0.0.1:{slow_gateway.port}",
            f"Cookie: {cookie}",
        )
    )
    sock.settimeout(10)
    assert sock.recv(4096).startswith(b"HTTP/1.1 101 ")
    assert not closed_by_server(sock, timeout=READ_DEADLINE_S + KEEPALIVE_S + 1.5), "the upgraded connection was cut"
    sock.close()


# --- the client's address -------------------------------------------------------------------------------------------------

CSRF_FIELD = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def an_address() -> str:
    """A fresh client address: rate-limit counters live in Redis, which outlives a test run."""
    return str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("100.64.0.0")) + secrets.randbelow(1 << 22)))


def sign_in(client: httpx.Client, email: str, password: str, *, forwarded: str) -> httpx.Response:
    form = client.get("/accounts/login/", headers={"x-forwarded-for": forwarded})
    token = CSRF_FIELD.search(form.text).group(1)
    data = {"login": email, "password": password, "csrfmiddlewaretoken": token}
    return client.post("/accounts/login/", data=data, headers={"x-forwarded-for": forwarded})


def proxied_gateway(sim: SimulatorServer, *, count: str, daphne_args: tuple[str, ...] = (), **env: str) -> LiveGateway:
    gateway = LiveGateway(env=live_gateway_env(sim.base_url, PORTAL_TRUSTED_PROXY_COUNT=count, **env), daphne_args=daphne_args)
    gateway.start()
    wait_until_gateway_caught_up(gateway)
    return gateway


def test_forged_forwarded_addresses_do_not_dodge_the_sign_in_limit(routed: IssuedKey, sim: SimulatorServer) -> None:
    # The README's production command line had --proxy-headers: daphne then took the left-most entry, the client's own.
    gateway = proxied_gateway(sim, count="1", daphne_args=("--proxy-headers",), PORTAL_RATELIMIT_SIGNIN="10/h")
    try:
        client_address = an_address()
        statuses = []
        with httpx.Client(base_url=gateway.url, timeout=20) as client:
            for i in range(30):
                forged = f"10.{i}.{i}.{i}, 192.0.2.{i + 1}"
                statuses.append(
                    sign_in(client, "nobody@example.com", "wrong", forwarded=f"{forged}, {client_address}").status_code
                )
        assert statuses == [200] * 10 + [429] * 20
        assert "daphne --proxy-headers is ignored" in gateway.log()
    finally:
        gateway.stop()


def test_audit_rows_sessions_and_logs_hold_the_address_our_proxy_added(routed: IssuedKey, sim: SimulatorServer) -> None:
    from allauth.usersessions.models import UserSession

    from apikeys.models import ApiKeyEvent
    from tests.portal_support import make_org, make_user
    from usage.models import RequestLog

    user = make_user("audited@example.com")
    make_org("audited", owner=user, plan="pro")
    gateway = proxied_gateway(sim, count="1")
    try:
        client_address = an_address()
        forwarded = f"6.6.6.6, {client_address}"
        with httpx.Client(base_url=gateway.url, timeout=20) as client:
            assert sign_in(client, "audited@example.com", PASSWORD, forwarded=forwarded).status_code == 302
            created = client.post(
                "/portal/api-keys",
                json={"name": "audited"},
                headers={"x-forwarded-for": forwarded, "x-csrftoken": client.cookies["csrftoken"], "accept": "application/json"},
            )
            assert created.status_code == 201, created.text
            models = client.get(
                "/v1/models", headers={"authorization": f"Bearer {created.json()['key']}", "x-forwarded-for": forwarded}
            )
            assert models.status_code == 200
        rid = models.headers["x-request-id"]
        assert UserSession.objects.get(user=user).ip == client_address
        assert (
            ApiKeyEvent.objects.get(api_key_id=created.json()["id"], action=ApiKeyEvent.Action.CREATE).source_ip == client_address
        )
        assert wait_for(lambda: RequestLog.objects.filter(request_id=rid).first()).client_ip == client_address
        access = [json.loads(line) for line in gateway.log().splitlines() if rid in line and '"logger": "access"' in line]
        assert [line["client"] for line in access] == [client_address]
    finally:
        gateway.stop()


def test_without_trusted_proxies_the_forwarded_header_is_ignored(gateway: LiveGateway, api_key: IssuedKey) -> None:
    from usage.models import RequestLog

    response = httpx.get(
        f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {api_key.raw}", "x-forwarded-for": "6.6.6.6"}
    )
    assert response.status_code == 200
    assert (
        wait_for(lambda: RequestLog.objects.filter(request_id=response.headers["x-request-id"]).first()).client_ip == "127.0.0.1"
    )


# --- logs ------------------------------------------------------------------------------------------------------------------


def test_secrets_in_urls_never_reach_the_log(gateway: LiveGateway) -> None:
    secrets_sent = [secrets.token_hex(12) for _ in range(4)]
    paths = [
        f"/accounts/password/reset/key/4-{secrets_sent[0]}/",
        f"/accounts/confirm-email/{secrets_sent[1]}/",
        f"/portal/invitations/{secrets_sent[2]}",
    ]
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        for path in paths:
            assert client.get(path).status_code < 500
        # A POST without a CSRF token: Django logs the path of the refusal itself (django.security.csrf) too.
        refused = client.post(f"/accounts/password/reset/key/7-{secrets_sent[3]}/", data={"password1": "x"})
        assert refused.status_code == 403
    wait_for(lambda: "django.security.csrf" in gateway.log())
    log = gateway.log()
    assert [s for s in secrets_sent if s in log] == []
    access = [json.loads(line) for line in log.splitlines() if '"logger": "access"' in line]
    logged = {line["path"] for line in access}
    assert {
        "/accounts/password/reset/key/[redacted]/",
        "/accounts/confirm-email/[redacted]/",
        "/portal/invitations/[redacted]",
    } <= logged


def test_a_path_cannot_forge_a_line_of_the_plain_log(start_gateway: Callable[..., LiveGateway]) -> None:
    gateway = start_gateway(LOG_FORMAT="plain")
    forged = "2030-01-01 00:00:00,000 INFO access GET /admin/ 200 0.10ms request_id=req_forged"
    sock = connect(gateway)
    target = "/v1/x%0a" + forged.replace(" ", "%20") + "%1b[2J%e2%80%a8"
    sock.sendall(head("GET", target))
    assert read_answer(sock, method="GET").status in (401, 404)
    sock.close()
    wait_for(lambda: "req_forged" in gateway.log())
    lines = gateway.log().splitlines()
    assert [line for line in lines if line.startswith("2030-")] == []
    line = next(line for line in lines if "req_forged" in line)
    assert " INFO access GET /v1/x\\n2030-01-01 " in line and "\\x1b[2J\\u2028" in line and "\x1b" not in line


# --- /health and /metrics ----------------------------------------------------------------------------------------------------


def test_strangers_see_no_traffic_latency_queues_or_pools(gateway: LiveGateway, api_key: IssuedKey) -> None:
    httpx.post(f"{gateway.url}{CHAT}", json=body_for(CHAT), headers=headers_for(api_key.raw, CHAT), timeout=20)
    for headers in ({}, {"authorization": "Bearer not-the-token-0123456789"}, {"authorization": b"Bearer \xff"}):
        metrics = httpx.get(f"{gateway.url}/metrics", headers=headers, timeout=10)
        assert metrics.status_code == 401 and "gateway_" not in metrics.text
        health = httpx.get(f"{gateway.url}/health", headers=headers, timeout=10)
        assert health.status_code == 200 and health.json() == {"status": "ok", "models": ["oss-20b"]}
    operator = {"authorization": f"Bearer {METRICS_TOKEN}"}
    assert "gateway_requests_total" in httpx.get(f"{gateway.url}/metrics", headers=operator, timeout=10).text
    details = httpx.get(f"{gateway.url}/health", headers=operator, timeout=10).json()
    assert {"checks", "pools", "usage_queue_depth", "cache_epoch", "duration_ms"} <= set(details)
