"""Pins the router simulator's wire behaviour, knobs, control API and stats (no database)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from simulator import (
    VOCABULARY,
    SimulatorServer,
    estimate_prompt_tokens,
    simulated_tokens,
)

AUTH_KEY = "default-dev-token"
PROMPT = "<|im_start|>user\nSay hello<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    with SimulatorServer() as running:
        yield running


@pytest.fixture
def sim(server: SimulatorServer) -> Iterator[SimulatorServer]:
    server.reset()
    yield server
    server.reset()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as http:
        yield http


def parse_sse(raw: str) -> tuple[list[str], list[Any]]:
    """Split a data-only SSE body into its comment lines and decoded data payloads."""
    comments: list[str] = []
    payloads: list[Any] = []
    for event in raw.split("\n\n"):
        if not event:
            continue
        for line in event.split("\n"):
            if line.startswith(":"):
                comments.append(line)
            elif line.startswith("data: "):
                data = line[len("data: ") :]
                payloads.append(data if data == "[DONE]" else json.loads(data))
    return comments, payloads


def wait_for(predicate: Callable[[], bool], timeout: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# --- pure functions -------------------------------------------------------------


def test_simulated_tokens_are_deterministic_words_from_the_vocabulary() -> None:
    tokens, reason = simulated_tokens(PROMPT, 128)

    assert (tokens, reason) == simulated_tokens(PROMPT, 128)
    assert reason == "stop"
    assert 8 <= len(tokens) <= 40
    assert not tokens[0].startswith(" ")
    assert tokens[0] in VOCABULARY
    assert all(t.startswith(" ") and t[1:] in VOCABULARY for t in tokens[1:])


def test_natural_length_spans_8_to_40_tokens_across_prompts() -> None:
    lengths = {len(simulated_tokens(f"prompt {i}", 1000)[0]) for i in range(400)}

    assert min(lengths) == 8
    assert max(lengths) == 40


def test_max_tokens_truncates_with_length_reason() -> None:
    full, _ = simulated_tokens(PROMPT, 1000)

    truncated, reason = simulated_tokens(PROMPT, 3)
    exact, exact_reason = simulated_tokens(PROMPT, len(full))

    assert truncated == full[:3]
    assert reason == "length"
    assert (exact, exact_reason) == (full, "stop")


def test_estimate_prompt_tokens_is_a_quarter_of_the_characters_rounded_up() -> None:
    assert estimate_prompt_tokens("") == 1
    assert estimate_prompt_tokens("abcd") == 1
    assert estimate_prompt_tokens("abcde") == 2
    assert estimate_prompt_tokens("x" * 400) == 100


# --- completions ------------------------------------------------------------------


def test_non_stream_answer_carries_the_deterministic_text_and_usage(sim: SimulatorServer, client: httpx.Client) -> None:
    tokens, reason = simulated_tokens(PROMPT, 5)

    response = client.post(
        sim.completions_url(102),
        json={"prompt": PROMPT, "max_tokens": 5, "temperature": 0.2, "extra": 1},
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["id"].startswith("cmpl-") and len(body["id"]) > 5
    assert body["object"] == "text_completion"
    assert body["model"] == "default"
    assert isinstance(body["created"], int) and abs(body["created"] - time.time()) < 5
    assert isinstance(body["task_id"], int)
    assert body["choices"] == [{"index": 0, "text": "".join(tokens), "finish_reason": reason, "logprobs": None}]
    prompt_tokens = estimate_prompt_tokens(PROMPT)
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 5,
        "total_tokens": prompt_tokens + 5,
    }


def test_max_tokens_defaults_to_128(sim: SimulatorServer, client: httpx.Client) -> None:
    tokens, reason = simulated_tokens(PROMPT, 128)

    body = client.post(sim.completions_url(1), json={"prompt": PROMPT}).json()

    assert body["choices"][0]["text"] == "".join(tokens)
    assert body["choices"][0]["finish_reason"] == reason == "stop"


def test_stream_sends_keepalive_token_chunks_final_chunk_and_done(sim: SimulatorServer, client: httpx.Client) -> None:
    tokens, reason = simulated_tokens(PROMPT, 128)

    response = client.post(sim.completions_url(102), json={"prompt": PROMPT, "stream": True})

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.text.startswith(": keep-alive\n\n")
    comments, payloads = parse_sse(response.text)
    assert comments == [": keep-alive"]
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    assert len(chunks) == len(tokens) + 1
    assert [c["choices"][0]["text"] for c in chunks[:-1]] == tokens
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert all("usage" not in c for c in chunks[:-1])
    final = chunks[-1]
    assert final["choices"] == [{"index": 0, "text": "", "finish_reason": reason}]
    prompt_tokens = estimate_prompt_tokens(PROMPT)
    assert final["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(tokens),
        "total_tokens": prompt_tokens + len(tokens),
    }
    identity = {(c["id"], c["task_id"], c["created"], c["object"], c["model"]) for c in chunks}
    assert len(identity) == 1
    (_, _, _, obj, model) = identity.pop()
    assert (obj, model) == ("text_completion", "default")


def test_stream_truncated_by_max_tokens_ends_with_length(sim: SimulatorServer, client: httpx.Client) -> None:
    response = client.post(sim.completions_url(3), json={"prompt": PROMPT, "stream": True, "max_tokens": 2})

    _, payloads = parse_sse(response.text)
    assert [c["choices"][0]["text"] for c in payloads[:2]] == simulated_tokens(PROMPT, 2)[0]
    assert payloads[2]["choices"][0]["finish_reason"] == "length"
    assert payloads[2]["usage"]["completion_tokens"] == 2
    assert payloads[3] == "[DONE]"


def test_omit_usage_drops_usage_from_both_shapes(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.configure(omit_usage=True)

    plain = client.post(sim.completions_url(1), json={"prompt": PROMPT}).json()
    streamed = client.post(sim.completions_url(1), json={"prompt": PROMPT, "stream": True})

    assert "usage" not in plain
    _, payloads = parse_sse(streamed.text)
    assert payloads[-1] == "[DONE]"
    assert all("usage" not in c for c in payloads[:-1])


def test_usage_on_every_chunk_when_not_only_at_end(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.configure(usage_only_at_end=False)

    response = client.post(sim.completions_url(1), json={"prompt": PROMPT, "stream": True, "max_tokens": 3})

    _, payloads = parse_sse(response.text)
    assert [c["usage"]["completion_tokens"] for c in payloads[:-1]] == [1, 2, 3, 3]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v3/completions/abc", 404),
        ("/api/v3/completions/12x", 404),
        ("/api/v3/completions/", 404),
    ],
)
def test_session_id_must_be_an_integer_path_segment(sim: SimulatorServer, client: httpx.Client, path: str, status: int) -> None:
    response = client.post(sim.base_url + path, json={"prompt": "x"})

    assert response.status_code == status


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"stream": false}', "prompt is required and must be a string"),
        (b'{"prompt": 3}', "prompt is required and must be a string"),
        (b"{not json", "invalid JSON body"),
        (b"[1, 2]", "body must be a JSON object"),
        (b'{"prompt": "x", "max_tokens": 0}', "max_tokens must be a positive integer"),
    ],
)
def test_malformed_requests_are_400(sim: SimulatorServer, client: httpx.Client, content: bytes, message: str) -> None:
    response = client.post(
        sim.completions_url(1),
        content=content,
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 400
    assert response.json() == {"error": message}


# --- auth -----------------------------------------------------------------------


def test_no_auth_key_configured_means_no_auth_check(sim: SimulatorServer, client: httpx.Client) -> None:
    response = client.post(sim.completions_url(1), json={"prompt": "x"})

    assert response.status_code == 200


@pytest.mark.parametrize("header", [None, "Token abc", "Bearer", AUTH_KEY])
def test_missing_or_ill_formed_authorization_is_plain_text_401(
    sim: SimulatorServer, client: httpx.Client, header: str | None
) -> None:
    sim.configure(auth_key=AUTH_KEY)
    headers = {} if header is None else {"Authorization": header}

    response = client.post(sim.completions_url(1), json={"prompt": "x"}, headers=headers)

    assert response.status_code == 401
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "Invalid Authorization header format"


def test_wrong_key_is_json_401_and_right_key_passes(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.configure(auth_key=AUTH_KEY)

    wrong = client.post(
        sim.completions_url(1),
        json={"prompt": "x"},
        headers={"Authorization": "Bearer nope"},
    )
    right = client.post(
        sim.completions_url(1),
        json={"prompt": "x"},
        headers={"Authorization": f"Bearer {AUTH_KEY}"},
    )

    assert wrong.status_code == 401
    assert wrong.json() == {"error": "unauthorized"}
    assert right.status_code == 200


def test_per_session_auth_key_overrides_the_global_one(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.configure(
        {"auth_key": "global-key"},
        sessions={7: {"auth_key": "session-key"}, 8: {"auth_key": None}},
    )

    def status(session: int, key: str | None) -> int:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return client.post(sim.completions_url(session), json={"prompt": "x"}, headers=headers).status_code

    assert status(7, "session-key") == 200
    assert status(7, "global-key") == 401
    assert status(9, "global-key") == 200
    assert status(8, None) == 200


# --- failure knobs ----------------------------------------------------------------


def test_fail_status_answers_every_completion_with_that_status(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.configure(fail_status=503)

    plain = client.post(sim.completions_url(1), json={"prompt": "x"})
    streamed = client.post(sim.completions_url(1), json={"prompt": "x", "stream": True})

    assert (plain.status_code, plain.json()) == (503, {"detail": "simulated failure"})
    assert (streamed.status_code, streamed.json()) == (
        503,
        {"detail": "simulated failure"},
    )


def test_per_session_fail_status_leaves_other_sessions_alone(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.configure(sessions={"102": {"fail_status": 502}})
    # A later global change still applies to the fields the session did not override.
    sim.configure(omit_usage=True)

    failing = client.post(sim.completions_url(102), json={"prompt": "x"})
    healthy = client.post(sim.completions_url(103), json={"prompt": "x"})

    assert failing.status_code == 502
    assert healthy.status_code == 200
    assert "usage" not in healthy.json()


def test_interleaved_miners_stream_has_two_task_ids_real_one_first(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.configure(interleave_miners=True)
    tokens, reason = simulated_tokens(PROMPT, 128)

    response = client.post(sim.completions_url(1), json={"prompt": PROMPT, "stream": True})

    _, payloads = parse_sse(response.text)
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    task_ids = list(dict.fromkeys(c["task_id"] for c in chunks))
    ids = list(dict.fromkeys(c["id"] for c in chunks))
    assert len(task_ids) == 2 and len(ids) == 2
    real = [c for c in chunks if c["task_id"] == task_ids[0]]
    decoy = [c for c in chunks if c["task_id"] == task_ids[1]]
    assert {c["id"] for c in real} == {ids[0]}
    assert [c["choices"][0]["text"] for c in real[:-1]] == tokens
    assert real[-1]["choices"][0]["finish_reason"] == reason
    decoy_text = "".join(c["choices"][0]["text"] for c in decoy)
    assert decoy_text and decoy_text != "".join(tokens)
    # Interleaved, not appended: the decoy's first chunk comes right after the real first one.
    assert chunks[1]["task_id"] == task_ids[1]


def test_interleaved_miners_non_stream_has_two_choices_first_with_the_answer(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.configure(interleave_miners=True)
    tokens, _ = simulated_tokens(PROMPT, 128)

    body = client.post(sim.completions_url(1), json={"prompt": PROMPT}).json()

    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["choices"][0]["text"] == "".join(tokens)
    assert body["choices"][1]["text"] not in ("", body["choices"][0]["text"])


def test_disconnect_after_tokens_truncates_the_stream_without_done(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.configure(disconnect_after_tokens=3)
    tokens, _ = simulated_tokens(PROMPT, 128)
    received: list[str] = []

    # The error surfaces mid-read, after the first lines were already delivered.
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", sim.completions_url(1), json={"prompt": PROMPT, "stream": True}) as response,
    ):
        assert response.status_code == 200
        received.extend(response.iter_lines())

    _, payloads = parse_sse("\n".join(received) + "\n\n")
    assert [c["choices"][0]["text"] for c in payloads] == tokens[:3]
    stats = sim.stats()
    assert stats["streams_truncated_by_server"] == 1
    assert stats["streams_completed"] == 0
    assert stats["streams_aborted_by_client"] == 0
    assert stats["streams_open"] == 0


def test_split_writes_deliver_events_in_pieces_with_the_same_content(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.configure(split_writes=True)
    pieces: list[bytes] = []

    with client.stream(
        "POST",
        sim.completions_url(1),
        json={"prompt": PROMPT, "stream": True, "max_tokens": 4},
    ) as response:
        pieces.extend(response.iter_raw())

    _, payloads = parse_sse(b"".join(pieces).decode())
    assert [c["choices"][0]["text"] for c in payloads[:4]] == simulated_tokens(PROMPT, 4)[0]
    assert payloads[-1] == "[DONE]"
    assert any(not piece.endswith(b"\n\n") for piece in pieces)


def test_first_byte_and_token_delays_slow_the_answer(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.configure(first_byte_delay_ms=100)
    started = time.monotonic()
    client.post(sim.completions_url(1), json={"prompt": "x"})
    assert time.monotonic() - started >= 0.1

    sim.configure(first_byte_delay_ms=0, token_delay_ms=30)
    started = time.monotonic()
    # 3 tokens + final chunk + [DONE] = 5 events, so 4 gaps of 30 ms.
    response = client.post(sim.completions_url(1), json={"prompt": "x", "stream": True, "max_tokens": 3})
    assert time.monotonic() - started >= 0.12
    assert parse_sse(response.text)[1][-1] == "[DONE]"


@pytest.mark.parametrize("stream", [True, False])
def test_hang_never_answers_and_stats_record_the_client_abort(sim: SimulatorServer, client: httpx.Client, stream: bool) -> None:
    sim.configure(hang=True)

    with pytest.raises(httpx.ReadTimeout):
        client.post(sim.completions_url(1), json={"prompt": "x", "stream": stream}, timeout=0.2)

    assert wait_for(lambda: sim.stats()["requests_aborted_by_client"] == 1)
    stats = sim.stats()
    assert stats["requests_open"] == 0
    assert stats["streams_open"] == 0
    assert stats["streams_aborted_by_client"] == (1 if stream else 0)


def test_client_closing_mid_stream_is_counted_within_a_second(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.configure(token_delay_ms=200)

    with client.stream("POST", sim.completions_url(1), json={"prompt": PROMPT, "stream": True}) as response:
        lines = response.iter_lines()
        while not next(lines).startswith("data: "):
            pass
        assert sim.stats()["streams_open"] == 1
        closed_at = time.monotonic()

    assert wait_for(lambda: sim.stats()["streams_aborted_by_client"] == 1)
    assert time.monotonic() - closed_at < 1.0
    stats = sim.stats()
    assert (stats["streams_open"], stats["streams_completed"]) == (0, 0)


# --- health and info routes -------------------------------------------------------


def test_health_and_info_routes_answer_json(sim: SimulatorServer, client: httpx.Client) -> None:
    client.post(sim.completions_url(102), json={"prompt": "x"})

    status = client.get(sim.base_url + "/api/v1/status")
    ping = client.get(sim.base_url + "/api/v1/ping")
    info = client.get(sim.base_url + "/api/v1/info")
    sessions = client.get(sim.base_url + "/api/v1/sessions")
    session = client.get(sim.base_url + "/api/v1/sessions/102")

    assert status.status_code == 200 and status.json()["status"] == "ok"
    assert (ping.status_code, ping.json()) == (200, {"pong": True})
    assert info.status_code == 200 and info.json()["sessions"] == [102]
    assert [s["id"] for s in sessions.json()["sessions"]] == [102]
    assert session.json()["id"] == 102 and session.json()["state"] == "active"
    assert session.json()["requests"] == 1


def test_status_fail_makes_health_routes_503(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.configure(sessions={5: {"status_fail": True}})

    assert client.get(sim.base_url + "/api/v1/status").status_code == 503
    assert client.get(sim.base_url + "/api/v1/ping").status_code == 503
    assert client.get(sim.base_url + "/api/v1/sessions/5").status_code == 503
    assert client.get(sim.base_url + "/api/v1/sessions/6").status_code == 200

    sim.reset()
    sim.configure(status_fail=True)
    assert client.get(sim.base_url + "/api/v1/status").status_code == 503


# --- control API and stats --------------------------------------------------------


def test_control_api_merges_config_and_returns_it_whole(sim: SimulatorServer, client: httpx.Client) -> None:
    first = client.post(
        sim.base_url + "/_sim/config",
        json={
            "global": {"token_delay_ms": 5},
            "sessions": {"102": {"omit_usage": True}},
        },
    )
    second = client.post(
        sim.base_url + "/_sim/config",
        json={"global": {"auth_key": "k"}, "sessions": {"102": {"fail_status": 500}}},
    )

    assert first.status_code == second.status_code == 200
    config = second.json()
    assert config["global"]["token_delay_ms"] == 5.0
    assert config["global"]["auth_key"] == "k"
    assert config["sessions"] == {"102": {"omit_usage": True, "fail_status": 500}}
    assert config["startup"]["auth_key"] is None


@pytest.mark.parametrize(
    "body",
    [
        {"global": {"no_such_knob": 1}},
        {"global": {"hang": "yes"}},
        {"sessions": {"abc": {"hang": True}}},
        {"other": {}},
    ],
)
def test_control_api_rejects_unknown_or_mistyped_knobs(sim: SimulatorServer, client: httpx.Client, body: dict[str, Any]) -> None:
    response = client.post(sim.base_url + "/_sim/config", json=body)

    assert response.status_code == 400
    assert sim.stats()["requests_total"] == 0
    assert client.get(sim.base_url + "/_sim/config").json()["global"]["hang"] is False


def test_reset_restores_startup_config_and_zeroes_stats(client: httpx.Client) -> None:
    with SimulatorServer(auth_key=AUTH_KEY, token_delay_ms=1) as sim:
        sim.configure(auth_key=None, omit_usage=True)
        client.post(sim.completions_url(1), json={"prompt": "x"})

        config = client.post(sim.base_url + "/_sim/reset").json()

        assert config["global"]["auth_key"] == AUTH_KEY
        assert config["global"]["token_delay_ms"] == 1.0
        assert config["global"]["omit_usage"] is False
        assert config["sessions"] == {}
        stats = client.get(sim.base_url + "/_sim/stats").json()
        assert stats["requests_total"] == 0
        assert stats["requests"] == {}
        assert stats["last_request"] is None


def test_stats_count_requests_and_record_bodies_without_the_key(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.configure(auth_key=AUTH_KEY)
    headers = {"Authorization": f"Bearer {AUTH_KEY}"}
    client.post(sim.completions_url(102), json={"prompt": "a", "stream": True}, headers=headers)
    client.post(sim.completions_url(102), json={"prompt": "b"}, headers=headers)
    client.post(sim.completions_url(7), json={"prompt": "c", "client_reference": "req_1"})

    stats = client.get(sim.base_url + "/_sim/stats").json()

    assert stats["requests"] == {"102": 2, "7": 1}
    assert stats["requests_total"] == 3
    assert stats["streams_open"] == 0
    assert stats["streams_completed"] == 1
    assert stats["streams_aborted_by_client"] == 0
    assert stats["statuses"] == {"200": 2, "401": 1}
    assert stats["last_request"]["prompt"] == "c"
    assert stats["last_request"]["client_reference"] == "req_1"
    assert stats["last_request"]["authorization"] is False
    assert stats["last_request"]["session_id"] == "7"
    assert [b["prompt"] for b in stats["last_bodies"]] == ["a", "b", "c"]
    assert AUTH_KEY not in json.dumps(stats)


def test_last_bodies_keeps_the_50_most_recent(sim: SimulatorServer, client: httpx.Client) -> None:
    for i in range(55):
        client.post(sim.completions_url(1), json={"prompt": str(i), "max_tokens": 1})

    bodies = sim.stats()["last_bodies"]

    assert [b["prompt"] for b in bodies] == [str(i) for i in range(5, 55)]


# --- SimulatorServer helper -------------------------------------------------------


def test_simulator_server_starts_on_a_free_port_and_stops_quickly_even_while_hanging() -> None:
    sim = SimulatorServer(hang=True)
    started = time.monotonic()
    sim.start()
    assert sim.port != 0
    assert sim.base_url == f"http://127.0.0.1:{sim.port}"
    outcome: list[BaseException | None] = []

    def hanging_request() -> None:
        try:
            httpx.post(sim.completions_url(1), json={"prompt": "x"}, timeout=3)
            outcome.append(None)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=hanging_request)
    worker.start()
    assert wait_for(lambda: sim.stats()["requests_open"] == 1)

    sim.stop()
    worker.join(timeout=3)

    assert time.monotonic() - started < 2
    assert outcome and isinstance(outcome[0], httpx.HTTPError)
    sim.stop()  # idempotent


def test_simulator_server_restarts_on_the_same_port_with_its_state() -> None:
    with SimulatorServer(auth_key=AUTH_KEY) as sim:
        port = sim.port
        sim.configure(sessions={4: {"omit_usage": True}})
        sim.stop()
        with pytest.raises(httpx.ConnectError):
            httpx.get(sim.base_url + "/api/v1/ping", timeout=1)

        sim.start()

        assert sim.port == port
        assert httpx.get(sim.base_url + "/api/v1/ping", timeout=1).json() == {"pong": True}
        assert sim.configure()["sessions"] == {"4": {"omit_usage": True}}
