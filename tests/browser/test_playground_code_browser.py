"""The playground's "View code" panel in a real browser: its snippets, copied off the page, run as they are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.browser.support import CHROMIUM, DESKTOP, PHONE, PortalServer, shot
from tests.browser.test_portal_browser import sign_in
from tests.support.live import ALIAS, wait_until_gateway_caught_up

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install chromium)"
)

KEY_ENV = "CORTENSOR_API_KEY"
OTHER = "oss-20b-alt"  # a second alias on the same pool: the snippets must follow the model chosen in the page
# Everything a careless snippet would break: both quotes, a newline, shell expansions, a script end tag, non-ASCII
# (an accent, an emoji outside the BMP), a backslash and a JSON-looking escape.
TRICKY = 'She said "it\'s fine" — naïve ☕🦀\nnext line: $HOME `whoami` $(id) </script><script>alert(1)</script> C:\\temp \\n end'
# What each route answers, and where its text is.
SHAPES = {
    "chat": ("/v1/chat/completions", lambda body: (body["object"], body["choices"][0]["message"]["content"]), "chat.completion"),
    "responses": ("/v1/responses", lambda body: (body["object"], body["output"][0]["content"][0]["text"]), "response"),
    "messages": ("/v1/messages", lambda body: (body["type"], body["content"][0]["text"]), "message"),
}
TABS = {"chat": "Chat Completions", "responses": "Responses", "messages": "Anthropic Messages"}


def member_with_key(email: str) -> str:
    """A verified member of an organization on the pro plan (room for every request here), and a raw key of it."""
    from apikeys.services import apikey_create
    from tests.support.portal import make_org, make_user

    org = make_org(email.split("@")[0], owner=make_user(email, name="Lin Code"), plan="pro")
    return apikey_create(organization=org, name="code panel", actor_label="tests").raw


def router_sent(sim) -> dict[str, object]:  # noqa: ANN001
    """The prompt and sampling the router was last sent: what the gateway made of the request."""
    sent = sim.stats()["last_request"]
    return {name: sent.get(name) for name in ("prompt", "max_tokens", "temperature", "stream")}


def code(page, api: str, language: str) -> str:  # noqa: ANN001
    return page.text_content(f"#pg-code-{api}-{language}")


def test_view_code_follows_the_conversation_and_its_snippets_run(portal: PortalServer, browser, sim) -> None:  # noqa: ANN001
    from routerpools.models import ModelAlias

    email = "lin@example.com"
    raw = member_with_key(email)
    route = ModelAlias.objects.get(alias=ALIAS)
    ModelAlias.objects.create(alias=OTHER, display_name="OSS 20B, second", pool=route.pool)
    wait_until_gateway_caught_up(portal)

    context = browser.new_context(viewport=DESKTOP, permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    sign_in(page, portal, email)
    page.goto(f"{portal.url}/portal/playground")

    # Opened from the keyboard, it shows an example turn until there is a conversation, and follows the controls live.
    toggle = page.locator("#pg-code-toggle")
    assert toggle.get_attribute("aria-expanded") == "false" and page.locator("#pg-code").is_hidden()
    toggle.focus()
    page.keyboard.press("Enter")
    assert toggle.get_attribute("aria-expanded") == "true" and page.locator("#pg-code").is_visible()
    assert "an example stands in" in page.inner_text("#pg-code-note")
    assert '{"role": "user", "content": "Hello!"}' in code(page, "chat", "python")
    page.select_option("#pg-model", OTHER)
    page.fill("#pg-max-tokens", "24")
    page.fill("#pg-temperature", "0.3")
    chat_python = code(page, "chat", "python")
    assert f'model="{OTHER}"' in chat_python and "max_tokens=24," in chat_python and "temperature=0.3," in chat_python
    assert f'base_url="{portal.url}/v1", api_key=os.environ["{KEY_ENV}"]' in chat_python

    # One message sent; the answer lands in the snippets as soon as it is complete.
    page.fill("#pg-prompt", "hi")
    page.press("#pg-prompt", "Enter")
    page.wait_for_selector(".msg-assistant:not(.is-streaming)", timeout=15_000)
    answer = page.eval_on_selector(".msg-assistant", "node => node.textContent")
    assert answer and page.locator(".msg-error").count() == 0
    assert json.dumps({"role": "assistant", "content": answer}, ensure_ascii=False) in code(page, "chat", "python")
    assert page.inner_text("#pg-code-note") == ""

    # The message being written is the last turn, exactly (JSON escapes, raw non-ASCII; in the shell, the single quote
    # closes the quoting, comes escaped, and opens it again).
    page.fill("#pg-prompt", TRICKY)
    turn = json.dumps({"role": "user", "content": TRICKY}, ensure_ascii=False)
    assert turn in code(page, "responses", "python")
    assert turn.replace("'", "'\\''") in code(page, "responses", "curl")
    assert "ctr_" not in page.content() and f"${KEY_ENV}" in code(page, "chat", "curl")

    # The tabs work from the keyboard; the copy button copies its block.
    page.locator("#pg-code .tabs-bar [role=tab]").first.focus()
    page.keyboard.press("ArrowRight")
    responses_tab = page.locator("#pg-code .tabs-bar [role=tab][aria-selected=true]")
    assert responses_tab.inner_text() == "Responses"
    assert page.evaluate("document.activeElement.textContent") == "Responses"
    assert page.locator("#pg-code-responses").is_visible() and page.locator("#pg-code-chat").is_hidden()
    copy = page.locator("#pg-code-responses button[data-copy-target=pg-code-responses-curl]")
    assert copy.inner_text() == "Copy curl"
    copy.click()
    page.wait_for_selector("#pg-code-responses button[data-copy-target=pg-code-responses-curl].is-done")
    assert page.evaluate("navigator.clipboard.readText()") == code(page, "responses", "curl").strip()
    shot(page, "playground-code")

    # What the gateway makes of this conversation when it is sent directly, built here, not by the page.
    conversation = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": TRICKY},
    ]
    with httpx.Client(base_url=portal.url, timeout=20) as http:
        direct = http.post(
            "/v1/chat/completions",
            json={"model": OTHER, "messages": conversation, "max_tokens": 24, "temperature": 0.3},
            headers={"Authorization": f"Bearer {raw}"},
        )
    assert direct.status_code == 200, direct.text
    expected_text = direct.json()["choices"][0]["message"]["content"]
    expected_sent = router_sent(sim)
    assert TRICKY in expected_sent["prompt"] and (expected_sent["max_tokens"], expected_sent["temperature"]) == (24, 0.3)

    env = {**os.environ, KEY_ENV: raw}
    for api, (path, read, kind) in SHAPES.items():
        page.click(f"#pg-code .tabs-bar [role=tab]:has-text('{TABS[api]}')")
        assert page.locator(f"#pg-code-{api}").is_visible()

        curl = code(page, api, "curl")
        assert f"curl {portal.url}{path} \\\n" in curl and raw not in curl
        # POSIX sh, the key written in where the placeholder was, and the status printed after the body.
        run = subprocess.run(
            ["sh", "-c", curl.replace(f"${KEY_ENV}", raw) + " -sS -w '\\n%{http_code}'"],
            capture_output=True,
            text=True,
            timeout=30,
            env={k: v for k, v in os.environ.items() if k != KEY_ENV},
        )
        body, _, status = run.stdout.rpartition("\n")
        assert run.returncode == 0 and status == "200", f"{api} curl: {run.returncode} {run.stdout!r} {run.stderr!r}"
        answered = json.loads(body)
        assert read(answered) == (kind, expected_text) and answered["model"] == OTHER, f"{api} curl: {answered}"
        assert router_sent(sim) == expected_sent, f"{api} curl"

        python = code(page, api, "python")
        assert raw not in python
        run = subprocess.run([sys.executable, "-c", python], capture_output=True, text=True, timeout=60, env=env)
        assert run.returncode == 0, f"{api} python:\n{python}\n{run.stderr}"
        assert run.stdout == expected_text + "\n", f"{api} python: {run.stdout!r}"
        assert router_sent(sim) == expected_sent, f"{api} python"

    # Anthropic's temperature scale ends at 1: its snippets say so and send 1, the OpenAI ones send what was chosen.
    page.fill("#pg-temperature", "1.5")
    assert 'extra_body={"temperature": 1},' in code(page, "messages", "python")
    assert "# Anthropic's temperature ends at 1: 1.5 is sent as 1.\ncurl " in code(page, "messages", "curl")
    assert '"temperature": 1.5\n}' in code(page, "responses", "curl") and "temperature=1.5," in code(page, "chat", "python")
    # A new chat empties the snippets' conversation down to the message being written.
    page.click("#pg-clear")
    assert f"    messages=[\n        {turn}\n    ],\n" in code(page, "chat", "python")
    context.close()


def test_the_code_panel_fits_a_phone(portal: PortalServer, browser) -> None:  # noqa: ANN001
    email = "phone-code@example.com"
    member_with_key(email)
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = context.new_page()
    sign_in(page, portal, email)
    page.goto(f"{portal.url}/portal/playground")
    page.fill("#pg-prompt", "a-long-unbroken-word-" * 20)
    page.click("#pg-code-toggle")
    curl = page.locator("#pg-code-chat-curl")
    assert curl.is_visible()
    # The long line scrolls inside its block; the page itself never scrolls sideways.
    assert curl.evaluate("node => node.scrollWidth > node.clientWidth")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    for api in ("responses", "messages"):
        page.click(f"#pg-code .tabs-bar [role=tab]:has-text('{TABS[api]}')")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], api
    shot(page, "phone-playground-code")
    context.close()


# Prompts that break naive quoting, each of which must come out of every snippet exactly as written.
HOSTILE = [
    TRICKY,
    "'",
    "it's '' ''' \\' \"\\\"",
    "-d @/etc/passwd ${IFS}$(printf x)!! \\\n\\",
    "tab\there, line\u2028separator, paragraph\u2029separator, next\u0085line, del\u007f, bom\ufeff inside",
    '"""triple""" \'\'\'quotes\'\'\' {"role": "system"} \\u0041 \\N{BULLET} %s {0}',
    "<!-- --> <script>document.title='x'</script> &amp; &lt;",
]


def test_every_snippet_carries_any_prompt_exactly(portal: PortalServer, browser) -> None:  # noqa: ANN001
    """No network: the Python snippets are parsed and their messages read back with `ast`; the curl snippets run in
    POSIX sh with `curl` replaced by a function that prints the body it was given. (The message is trimmed as the
    playground trims what it sends, so none of these starts or ends with white space.)"""
    import ast

    email = "quotes@example.com"
    member_with_key(email)
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    sign_in(page, portal, email)
    page.goto(f"{portal.url}/portal/playground")
    page.click("#pg-code-toggle")
    print_body = 'curl() { for arg; do body=$arg; done; printf %s "$body"; }\n'
    for text in HOSTILE:
        page.fill("#pg-prompt", text)
        for api, field in (("chat", "messages"), ("responses", "input"), ("messages", "messages")):
            python = code(page, api, "python")
            call = next(
                node
                for node in ast.walk(ast.parse(python))
                if isinstance(node, ast.Call) and any(k.arg == field for k in node.keywords)
            )
            sent = ast.literal_eval(next(k.value for k in call.keywords if k.arg == field))
            assert sent == [{"role": "user", "content": text}], (api, text, python)

            run = subprocess.run(["sh", "-c", print_body + code(page, api, "curl")], capture_output=True, timeout=10)
            assert run.returncode == 0, (api, text, run.stderr)
            assert json.loads(run.stdout.decode())[field] == [{"role": "user", "content": text}], (api, text)
    context.close()
