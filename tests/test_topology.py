"""The production topology, brought up from deploy/ on this machine and driven the way clients and operators do.

nginx (Debian's package, deploy/nginx/ rendered into a temporary directory) in front of two daphne processes that
supervisord runs through deploy/entrypoint.sh (the image's entry script), the test database behind a TCP relay the
test can cut, Redis, and the router simulator (the only fake). The tests run in order on one topology:

(a) the official openai and anthropic SDKs through nginx, streams included;
(b) the live usage feed open on one process shows a request another process served;
(c) deploy/rolling_restart.py under steady load: no request fails, every one has its usage row, none has two;
(d) PostgreSQL cut for a few seconds: requests are served from the processes' caches, and their rows are written
    once it is back;
(e) the client address recorded (request log rows, the gateway's and nginx's access logs) is the client's own, not
    a forged X-Forwarded-For entry and not nginx's.

The figures (requests and failures during the restart, seconds per process, the outage) are printed for the README:
`make test-slow` or `pytest -m slow -s tests/test_topology.py`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from django.conf import settings

from routerpools.config import parse_router_env
from routerpools.services import router_pools_sync
from simulator import SimulatorServer
from tests.conftest import (
    ALIAS,
    METRICS_TOKEN,
    ROOT,
    ROUTER_KEY,
    SESSION_102_KEY,
    LiveGateway,
    live_gateway_env,
    router_env,
    wait_until_gateway_caught_up,
)
from tests.portal_support import PASSWORD, ensure_site_and_plans, make_org, make_user
from tests.support.feed import FeedSocket
from tests.support.plans import big_plan
from tests.support.topology import CLIENT_ADDRESS, Topology, client_transport, nginx_missing, wait_until
from tests.support.traffic import CHAT, ENVELOPE, MESSAGES, body_for, headers_for, stream_completed
from usage.models import RequestLog, UsageEvent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(nginx_missing() is not None, reason=nginx_missing() or ""),
    pytest.mark.skipif(settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"), reason="PostgreSQL behind a relay"),
]

ROWS_S = 60.0  # usage rows must be in the database within this of being due (a write retried after an outage included)
FORGED = "203.0.113.77"  # what a client writes in X-Forwarded-For, hoping to be taken for it


@dataclass
class Deployment:
    topology: Topology
    sim: SimulatorServer
    org_id: int
    email: str
    keys: dict[str, str] = field(default_factory=dict)  # purpose -> raw key

    def key(self, purpose: str) -> str:
        """A key of its own for each part of the test, so that its usage rows are counted apart."""
        if purpose not in self.keys:
            from accounts.models import Organization
            from apikeys.services import apikey_create

            org = Organization.objects.get(pk=self.org_id)
            self.keys[purpose] = apikey_create(organization=org, name=purpose, actor_label="topology test").raw
            caught_up(self.topology)
        return self.keys[purpose]


@pytest.fixture(scope="module")
def topology(django_db_setup, django_db_blocker) -> Iterator[tuple[Topology, SimulatorServer]]:  # noqa: ANN001
    """Started once for the module; each test gets the database rows it needs from `deployment`."""
    sim = SimulatorServer(auth_key=ROUTER_KEY).start()
    sim.configure(sessions={"102": {"auth_key": SESSION_102_KEY}})
    env = live_gateway_env(
        sim.base_url,
        # The settings the image runs, not the test suite's.
        DJANGO_SETTINGS_MODULE="portal_project.settings",
        PORTAL_TRUSTED_PROXY_COUNT="1",
        PORTAL_PUBLIC_BASE_URL="http://127.0.0.1",
        PORTAL_CACHE_PREFIX=f"topology-{uuid.uuid4().hex[:8]}",
        PORTAL_RATELIMIT_SIGNIN="1000/m",
        PORTAL_USAGE_FLUSH_MS="100",
    )
    topo = Topology(gateway_env=env, database=settings.DATABASES["default"])
    try:
        with django_db_blocker.unblock():
            if "whitenoise.middleware.WhiteNoiseMiddleware" in settings.MIDDLEWARE:
                collect_static(env)  # what the image's build does
        topo.start()
        yield topo, sim
    finally:
        topo.stop()
        sim.stop()


def caught_up(topology: Topology) -> None:
    """Every process has loaded what the database holds now (the suite's own wait, once per process)."""
    for port in topology.ports:
        wait_until_gateway_caught_up(LiveGateway(env=topology.gateway_env, port=port), timeout=30)


@pytest.fixture
def deployment(transactional_db, topology: tuple[Topology, SimulatorServer]) -> Iterator[Deployment]:  # noqa: ANN001
    """What a fresh deployment holds (plans, the env pools, the Site), an organization and its owner; each test starts
    from an empty database, like the rest of the suite."""
    topo, sim = topology
    ensure_site_and_plans()
    router_pools_sync(config=parse_router_env(router_env(sim.base_url)))
    plan = big_plan()
    user = make_user(f"ops-{uuid.uuid4().hex[:6]}@example.com")
    org = make_org(f"topology-{uuid.uuid4().hex[:6]}", owner=user, plan=plan.slug)
    caught_up(topo)
    yield Deployment(topology=topo, sim=sim, org_id=org.pk, email=user.email)
    sim.configure(token_delay_ms=0)
    # The rows of this test are written before the database is emptied under the processes.
    for i in range(topo.processes):
        if topo.supervisord is not None and topo.supervisord.poll() is None:
            wait_until(
                f"process {i} wrote its usage rows",
                lambda i=i: queue_depth(topo, i) == 0,
                timeout=ROWS_S,
                interval=0.1,
                log=topo.gateway_log,
            )


def queue_depth(topology: Topology, index: int) -> int | None:
    try:
        health = httpx.get(
            f"{topology.process_url(index)}/health", headers={"authorization": f"Bearer {METRICS_TOKEN}"}, timeout=5
        ).json()
    except (httpx.HTTPError, ValueError):
        return None
    return health.get("usage_queue_depth")


def collect_static(env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"collectstatic failed:\n{done.stdout}\n{done.stderr}"


def nginx_client(**kwargs: Any) -> httpx.Client:
    return httpx.Client(transport=client_transport(), timeout=60, **kwargs)


def usage_rows(request_ids: list[str], timeout: float = ROWS_S) -> dict[str, UsageEvent]:
    wait_until(
        f"usage rows of {len(request_ids)} requests",
        lambda: UsageEvent.objects.filter(request_id__in=request_ids).count() == len(set(request_ids)),
        timeout=timeout,
        interval=0.2,
    )
    return {row.request_id: row for row in UsageEvent.objects.filter(request_id__in=request_ids)}


def rows_of_key(raw_key: str) -> list[UsageEvent]:
    from apikeys.keys import split_key
    from apikeys.models import ApiKey

    key = ApiKey.objects.get(public_id=split_key(raw_key))
    return list(UsageEvent.objects.filter(api_key=key))


def one_request(
    client: httpx.Client, base_url: str, raw_key: str, path: str, *, stream: bool, text: str
) -> tuple[bool, str, str]:
    """(answered in full, request id, what went wrong) for one request with no retry of any kind."""
    try:
        response = client.post(
            f"{base_url}{path}", json=body_for(path, text=text, max_tokens=12, stream=stream), headers=headers_for(raw_key, path)
        )
    except httpx.HTTPError as exc:
        return False, "", repr(exc)
    request_id = response.headers.get("x-request-id", "")
    if response.status_code != 200:
        return False, request_id, f"{response.status_code} {response.text[:300]}"
    if stream and not stream_completed(path, response.text):
        return False, request_id, f"stream cut: {response.text[-300:]}"
    return True, request_id, ""


# --- (a) the official SDKs through nginx -------------------------------------------------------------------------------


def test_the_official_sdks_work_through_nginx_streams_included(deployment: Deployment) -> None:
    raw = deployment.key("sdks")
    url = deployment.topology.url
    oai = openai.OpenAI(base_url=f"{url}/v1", api_key=raw, max_retries=0, timeout=60, http_client=nginx_client())
    # The anthropic SDK brings its own HTTP library (httpx2), with the same transport options.
    ant_http = httpx2.Client(transport=httpx2.HTTPTransport(local_address=CLIENT_ADDRESS), timeout=60)
    ant = anthropic.Anthropic(base_url=url, api_key=raw, max_retries=0, timeout=60, http_client=ant_http)
    hi = [{"role": "user", "content": "hi"}]

    assert ALIAS in [model.id for model in oai.models.list()]
    completion = oai.chat.completions.create(model=ALIAS, messages=hi, max_tokens=12)
    assert completion.choices[0].message.content and completion.usage and completion.usage.completion_tokens > 0

    message = ant.messages.create(model=ALIAS, max_tokens=12, messages=hi)
    assert message.content[0].text and message.usage.output_tokens > 0

    # Streams come through as they are produced, not buffered to the end by nginx: 20 tokens 60 ms apart.
    deployment.sim.configure(token_delay_ms=60)
    try:
        arrivals: list[float] = []
        pieces: list[str] = []
        for chunk in oai.chat.completions.create(
            model=ALIAS, messages=hi, max_tokens=20, stream=True, stream_options={"include_usage": True}
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic())
                pieces.append(chunk.choices[0].delta.content)
            final_usage = chunk.usage
        assert len(pieces) == 20 and final_usage is not None and final_usage.completion_tokens == 20
        # Buffered, they would all arrive together; the router spends 19 x 60 ms between the first and the last.
        assert arrivals[-1] - arrivals[0] > 0.5, arrivals

        with ant.messages.stream(model=ALIAS, max_tokens=20, messages=hi) as stream:
            text_arrivals = [time.monotonic() for _ in stream.text_stream]
            final = stream.get_final_message()
        assert len(text_arrivals) == 20 and final.usage.output_tokens == 20
        assert text_arrivals[-1] - text_arrivals[0] > 0.5, text_arrivals
    finally:
        deployment.sim.configure(token_delay_ms=0)

    # nginx's own refusal of a body over PORTAL_MAX_BODY_BYTES comes in each SDK's error shape.
    too_big = "x" * (settings.PORTAL_MAX_BODY_BYTES + 1)
    with pytest.raises(openai.APIStatusError) as refused:
        oai.chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": too_big}], max_tokens=1)
    assert refused.value.status_code == 413 and refused.value.code == "request_too_large"
    assert refused.value.response.headers["x-request-id"].startswith("req_")
    with pytest.raises(anthropic.APIStatusError) as refused_anthropic:
        ant.messages.create(model=ALIAS, max_tokens=1, messages=[{"role": "user", "content": too_big}])
    assert refused_anthropic.value.status_code == 413
    assert refused_anthropic.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]

    wait_until("the SDK requests' usage rows", lambda: len(rows_of_key(raw)) == 4, timeout=ROWS_S)
    rows = rows_of_key(raw)
    assert sorted((row.route, row.streamed) for row in rows) == sorted(
        [("chat.completions", False), ("messages", False), ("chat.completions", True), ("messages", True)]
    ), [(row.route, row.streamed) for row in rows]


def test_static_files_pass_through_nginx_and_its_cache(deployment: Deployment) -> None:
    with nginx_client() as client:
        first = client.get(f"{deployment.topology.url}/static/portal/portal.css")
        second = client.get(f"{deployment.topology.url}/static/portal/portal.css")
    assert "x-cache-status" in first.headers  # the /static/ location answered
    if "whitenoise.middleware.WhiteNoiseMiddleware" in settings.MIDDLEWARE:
        assert first.status_code == 200 and second.headers["x-cache-status"] == "HIT", (first.headers, second.headers)
    else:
        # Before WhiteNoise, DEBUG-off Django serves no static file: the 404 is the app's (it carries a request id).
        assert first.status_code == 404 and first.headers["x-request-id"].startswith("req_")


# --- (b) the live feed across processes --------------------------------------------------------------------------------


def sign_in_through_nginx(url: str, email: str) -> str:
    with nginx_client(base_url=url) as http:
        http.get("/accounts/login/")
        response = http.post(
            "/accounts/login/",
            data={"login": email, "password": PASSWORD, "csrfmiddlewaretoken": http.cookies["csrftoken"]},
        )
        assert response.status_code == 302, response.text[:500]
        return http.cookies["sessionid"]


def test_a_feed_on_one_process_shows_a_request_the_other_served(deployment: Deployment) -> None:
    topology = deployment.topology
    session = sign_in_through_nginx(topology.url, deployment.email)
    raw = deployment.key("feed")
    sockets = {
        "first process": FeedSocket(topology.process_url(0), session),
        "through nginx": FeedSocket(topology.url, session),  # the WebSocket upgrade passes the front
    }
    try:
        for name, feed in sockets.items():
            ready = feed.receive()
            assert ready is not None and ready["type"] == "ready", (name, ready)
        with httpx.Client(timeout=60) as client:  # straight to the second process
            ok, request_id, problem = one_request(client, topology.process_url(1), raw, CHAT, stream=False, text="feed")
        assert ok, problem
        for name, feed in sockets.items():
            message = feed.receive()
            assert message is not None and message["type"] == "request" and message["request_id"] == request_id, (name, message)
    finally:
        for feed in sockets.values():
            feed.close()


# --- (c) a rolling restart under load ----------------------------------------------------------------------------------


@dataclass
class Load:
    """Clients sending requests through nginx until stopped: one sequential client and a few concurrent ones."""

    url: str
    raw_key: str
    clients: int = 4
    results: list[tuple[float, bool, str, str]] = field(default_factory=list)  # (ended at, ok, request id, problem)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for n in range(self.clients):
            thread = threading.Thread(target=self._run, args=(n,), name=f"load-{n}", daemon=True)
            self.threads.append(thread)
            thread.start()
        return self

    def _run(self, n: int) -> None:
        paths = (CHAT, MESSAGES, ENVELOPE)
        with nginx_client() as client:
            i = 0
            while not self.stop.is_set():
                path = paths[(i + n) % 3]
                ok, request_id, problem = one_request(client, self.url, self.raw_key, path, stream=i % 2 == 0, text=f"c{n} r{i}")
                self.results.append((time.monotonic(), ok, request_id, problem))
                i += 1

    def finish(self) -> list[tuple[float, bool, str, str]]:
        self.stop.set()
        for thread in self.threads:
            thread.join(120)
            assert not thread.is_alive(), f"{thread.name} still waiting on a request after 120 s"
        return self.results


def test_a_rolling_restart_under_load_fails_no_request_and_loses_no_usage_row(deployment: Deployment) -> None:
    topology = deployment.topology
    raw = deployment.key("rolling")
    deployment.sim.configure(token_delay_ms=15)  # a stream takes about 0.2 s: some are always in flight
    pids_before = topology.pids()
    errors_before = topology.nginx_upstream_errors()
    try:
        load = Load(topology.url, raw).start()
        wait_until("load running", lambda: len(load.results) >= 20, timeout=60)
        started = time.monotonic()
        restarted = topology.rolling_restart()
        ended = time.monotonic()
        wait_until("load after the restart", lambda: sum(1 for r in load.results if r[0] > ended) >= 20, timeout=60)
        results = load.finish()
    finally:
        deployment.sim.configure(token_delay_ms=0)

    per_process = [line for line in restarted if "process" in line]
    during = [r for r in results if started <= r[0] <= ended]
    failures = [r for r in results if not r[1]]
    request_ids = [r[2] for r in results if r[1]]
    print(
        f"\nROLLING RESTART: {len(per_process)} processes in {ended - started:.1f}s; "
        + ", ".join(f"{p['process']}: stop {p['stop_s']}s + back {p['back_s']}s" for p in per_process)
        + f"; requests during it: {len(during)} ({sum(1 for r in during if r[1])} ok), all: {len(results)}, failed: {len(failures)}"
    )
    assert failures == [], failures[:10]
    assert len(per_process) == topology.processes
    pids_after = topology.pids()
    assert all(pids_after[name] != pid for name, pid in pids_before.items()), (pids_before, pids_after)  # each was replaced
    assert len(during) >= 10, "the load did not overlap the restart"

    # Every request has its row, once: no row was lost with a process, and none was made twice by a retry.
    assert len(request_ids) == len(set(request_ids))
    usage_rows(request_ids)
    rows = rows_of_key(raw)
    assert sorted(row.request_id for row in rows) == sorted(request_ids)
    assert {row.status for row in rows} == {"ok"}
    errors = {kind: count - errors_before[kind] for kind, count in topology.nginx_upstream_errors().items()}
    print(
        f"ROLLING RESTART: nginx sent requests on to the other process: {errors['refused']} refused connections, "
        f"{errors['broken']} broken before any answer"
    )


# --- (d) a database cut ------------------------------------------------------------------------------------------------


def test_a_database_cut_is_served_from_cache_and_loses_no_usage_row(deployment: Deployment) -> None:
    topology = deployment.topology
    assert topology.relay is not None
    raw = deployment.key("outage")
    with httpx.Client(timeout=60) as client:
        # Each process learns the key before the cut (the processes just restarted know no key yet).
        warm = [
            one_request(client, topology.process_url(i), raw, CHAT, stream=False, text="warm") for i in range(topology.processes)
        ]
    assert all(ok for ok, _, _ in warm), warm
    usage_rows([rid for _, rid, _ in warm])

    outage_s = 6.0
    served: list[str] = []
    problems: list[str] = []
    topology.relay.cut()
    cut_at = time.monotonic()
    try:
        with nginx_client() as client:
            i = 0
            while time.monotonic() - cut_at < outage_s:
                path = (CHAT, MESSAGES, ENVELOPE)[i % 3]
                ok, request_id, problem = one_request(client, topology.url, raw, path, stream=i % 2 == 1, text=f"outage {i}")
                (served if ok else problems).append(request_id if ok else problem)
                i += 1
                time.sleep(0.05)
    finally:
        topology.relay.start()  # the same port again
    restored_at = time.monotonic()
    assert problems == [], problems[:5]
    assert len(served) >= 20, served
    # Nothing could be written while the database was away: every row waited in the processes' memory.
    written_during = UsageEvent.objects.filter(request_id__in=served).count()
    rows = usage_rows(served)
    caught_up = time.monotonic() - restored_at
    print(
        f"\nDATABASE CUT: {restored_at - cut_at:.1f}s without PostgreSQL, {len(served)} requests served and 0 failed; "
        f"rows written during it: {written_during}; all {len(rows)} rows written {caught_up:.1f}s after it came back"
    )
    assert written_during == 0
    assert sorted(row.request_id for row in rows_of_key(raw)) == sorted([rid for _, rid, _ in warm] + served)


# --- (e) client addresses ----------------------------------------------------------------------------------------------


def test_the_client_address_recorded_is_the_clients_not_a_forged_one_nor_nginxs(deployment: Deployment) -> None:
    topology = deployment.topology
    raw = deployment.key("addresses")
    with nginx_client() as client:  # from 127.0.0.2; nginx reaches the processes from 127.0.0.1
        response = client.post(
            f"{topology.url}{CHAT}",
            json=body_for(CHAT, text="who am i"),
            headers={**headers_for(raw, CHAT), "X-Forwarded-For": FORGED, "X-Forwarded-Proto": "https"},
        )
    assert response.status_code == 200, response.text
    request_id = response.headers["x-request-id"]

    log_row = wait_until("the request log row", lambda: RequestLog.objects.filter(request_id=request_id).first(), timeout=ROWS_S)
    assert log_row.client_ip == CLIENT_ADDRESS

    access = wait_until(
        "the gateway's access line",
        lambda: [line for line in topology.gateway_access_lines() if line.get("request_id") == request_id],
        timeout=ROWS_S,
    )
    assert [line["client"] for line in access] == [CLIENT_ADDRESS]

    front = [line for line in topology.nginx_access_lines() if line["request_id"] == request_id]
    assert [(line["client"], line["x_forwarded_for"]) for line in front] == [(CLIENT_ADDRESS, FORGED)]
    print(f"\nCLIENT ADDRESS: sent from {CLIENT_ADDRESS} with X-Forwarded-For {FORGED}: recorded {log_row.client_ip}")


def test_the_processes_stop_cleanly_with_their_manager(deployment: Deployment) -> None:
    """Last: supervisord stops every process with SIGTERM and each drains and exits 0 (no SIGKILL at stopwaitsecs)."""
    topology = deployment.topology
    assert topology.supervisord is not None
    topology.supervisord.terminate()
    assert topology.supervisord.wait(90) == 0
    log = topology.gateway_log()
    stopped = [line for line in log.splitlines() if "stopped: daphne-" in line]
    assert len(stopped) >= topology.processes and all("exit status 0" in line for line in stopped[-topology.processes :]), stopped
    assert "SIGKILL" not in log and "unwritten" not in log
    print(json.dumps({"gateway_log_lines": len(log.splitlines())}))
