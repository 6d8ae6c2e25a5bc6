"""A fake Stripe API for tests and manual runs: an aiohttp server on 127.0.0.1 in a background thread.

It speaks what the official `stripe` SDK sends for what the portal uses: form-encoded bodies with bracketed nested
keys (`line_items[0][price_data][unit_amount]=1000`), `Authorization: Bearer <secret key>`, `Idempotency-Key`
(a replay answers the first response; other parameters under the same key are an `idempotency_error`). Answers are
Stripe-shaped objects (`object`, `id` with Stripe's prefixes, Unix-second `created`, `livemode: false`) and errors
`{"error": {"type", "code", "message", "param"}}` with Stripe's statuses (400, 401, 404).

Endpoints: customers create/retrieve, checkout sessions create/retrieve, billing portal sessions create, prices
retrieve. A Checkout session's `url` is a hosted page here (`/c/pay/<id>`): its "Pay" button completes the session
(payment mode: `payment_status: paid` and a PaymentIntent id; subscription mode: an active subscription of the
price), sends the events Stripe sends (`customer.subscription.created` for a subscription, then
`checkout.session.completed`) to `webhook_url` signed with Stripe's scheme (`Stripe-Signature: t=<unix>,v1=<hex
HMAC-SHA256(webhook secret, "<t>.<payload>")>`), and redirects to the session's `success_url` with
`{CHECKOUT_SESSION_ID}` filled in. Without `webhook_url` the events wait in `outbox` for the test to deliver.
`subscription_update` and `subscription_cancel` send `customer.subscription.updated`/`.deleted` as the Dashboard would.

Run by hand beside `make run`: `python -m tests.support.fake_stripe --port 12111 --webhook-url
http://127.0.0.1:8000/stripe/webhook` (docs/configuration.md, "Stripe").
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import html
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
from aiohttp import web

from simulator.server import BackgroundServer

API_VERSION = "2025-01-01"  # what the fake reports; the SDK's own Stripe-Version header is recorded, not checked
_KEY_PART = re.compile(r"([^\[\]]+)|\[([^\[\]]*)\]")


def decode_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding back into objects: `a[b][0][c]=v` → {"a": {"b": [{"c": "v"}]}}."""
    root: dict[str, Any] = {}
    for raw_key, value in pairs:
        parts = [m.group(1) if m.group(1) is not None else m.group(2) for m in _KEY_PART.finditer(raw_key)]
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise StripeError(400, "invalid_request_error", f"Invalid parameter: {raw_key}", param=raw_key)
        node[parts[-1]] = value
    return _listify(root)


def _listify(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    items = {key: _listify(sub) for key, sub in value.items()}
    if items and all(key.isdigit() for key in items):
        return [items[key] for key in sorted(items, key=int)]
    return items


def sign_payload(payload: bytes, secret: str, *, timestamp: int | None = None) -> str:
    """The Stripe-Signature header Stripe sends with a webhook: t=<unix seconds>,v1=<hex HMAC-SHA256>."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


class StripeError(Exception):
    def __init__(self, status: int, kind: str, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.code, self.param = status, kind, message, code, param

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.kind, "message": self.message}
        if self.code:
            error["code"] = self.code
        if self.param:
            error["param"] = self.param
        return {"error": error}


def _missing(param: str) -> StripeError:
    return StripeError(400, "invalid_request_error", f"Missing required param: {param}.", code="parameter_missing", param=param)


def _no_such(kind: str, ident: str, param: str = "id") -> StripeError:
    return StripeError(404, "invalid_request_error", f"No such {kind}: '{ident}'", code="resource_missing", param=param)


def _new_id(prefix: str) -> str:
    return f"{prefix}_test_{secrets.token_hex(12)}" if prefix == "cs" else f"{prefix}_{secrets.token_hex(7)}"


def _int(value: Any, param: str) -> int:
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise StripeError(400, "invalid_request_error", f"Invalid integer: {value}", code="parameter_invalid_integer", param=param)


@dataclass
class SentEvent:
    """One event as the fake sent (or would send) it: the exact bytes, their signature, and each delivery's status."""

    id: str
    type: str
    payload: bytes
    signature: str
    deliveries: list[int] = field(default_factory=list)  # HTTP statuses; 0: the endpoint could not be reached

    @property
    def headers(self) -> dict[str, str]:
        return {"Stripe-Signature": self.signature, "Content-Type": "application/json; charset=utf-8"}


@dataclass
class RecordedRequest:
    method: str
    path: str
    params: dict[str, Any]
    authorized: bool
    idempotency_key: str | None
    stripe_version: str | None


@dataclass
class FakeStripe:
    """The fake's state; tests read and change it from their own thread under `lock`."""

    secret_key: str
    webhook_secret: str
    base_url: str = ""
    webhook_url: str | None = None
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    portal_sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    prices: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[SentEvent] = field(default_factory=list)
    requests: list[RecordedRequest] = field(default_factory=list)
    idempotent: dict[str, tuple[str, dict[str, Any], int, dict[str, Any]]] = field(default_factory=dict)
    clock_offset_s: int = 0  # added to the times of objects and events (not to signatures): `advance` moves it
    fail_next: int = 0  # the next N API calls answer 500 api_error (the SDK retries them when it may)
    lock: threading.RLock = field(default_factory=threading.RLock)

    # --- test helpers -------------------------------------------------------------------------------------------------
    def price_add(self, *, unit_amount: int, interval: str = "month", product_name: str = "Pro", price_id: str = "") -> str:
        price_id = price_id or _new_id("price")
        with self.lock:
            self.prices[price_id] = {
                "id": price_id,
                "object": "price",
                "active": True,
                "currency": "usd",
                "unit_amount": unit_amount,
                "type": "recurring",
                "recurring": {"interval": interval, "interval_count": 1},
                "product": _new_id("prod"),
                "nickname": product_name,
                "created": self.now(),
                "livemode": False,
            }
        return price_id

    def now(self) -> int:
        return int(time.time()) + self.clock_offset_s

    def advance(self, seconds: int) -> None:
        """Later events carry later `created` times, as Stripe's do; their signatures stay current."""
        with self.lock:
            self.clock_offset_s += seconds

    def reset(self) -> None:
        with self.lock:
            for table in (self.customers, self.sessions, self.portal_sessions, self.prices, self.subscriptions):
                table.clear()
            self.events.clear()
            self.requests.clear()
            self.idempotent.clear()
            self.webhook_url = None
            self.fail_next = 0
            self.clock_offset_s = 0

    def calls(self, method: str, path_prefix: str) -> list[RecordedRequest]:
        with self.lock:
            return [r for r in self.requests if r.method == method and r.path.startswith(path_prefix)]

    @property
    def outbox(self) -> list[SentEvent]:
        """Events not yet delivered with a 2xx."""
        with self.lock:
            return [e for e in self.events if not any(200 <= s < 300 for s in e.deliveries)]

    def event_of(self, event_type: str) -> SentEvent:
        with self.lock:
            return next(e for e in reversed(self.events) if e.type == event_type)

    def complete_session(self, session_id: str) -> str:
        """What the hosted page's Pay button does; returns the success URL. Events go out after the lock is let go."""
        with self.lock:
            session = self.sessions.get(session_id)
            if session is None:
                raise _no_such("checkout.session", session_id)
            if session["status"] != "open":
                raise StripeError(400, "invalid_request_error", "This Checkout Session is no longer active.")
            now = self.now()
            session["status"] = "complete"
            session["payment_status"] = "paid"
            events: list[SentEvent] = []
            if session["mode"] == "payment":
                session["payment_intent"] = _new_id("pi")
            else:
                price_id = session["line_items"][0]["price"]
                subscription = {
                    "id": _new_id("sub"),
                    "object": "subscription",
                    "customer": session["customer"],
                    "status": "active",
                    "created": now,
                    "current_period_start": now,
                    "cancel_at_period_end": False,
                    "metadata": dict(session.get("subscription_data", {}).get("metadata", {})),
                    "items": {
                        "object": "list",
                        "data": [
                            {"id": _new_id("si"), "object": "subscription_item", "price": self.prices[price_id], "quantity": 1}
                        ],
                    },
                    "livemode": False,
                }
                self.subscriptions[subscription["id"]] = subscription
                session["subscription"] = subscription["id"]
                events.append(self._event("customer.subscription.created", subscription, created=now))
            events.append(self._event("checkout.session.completed", self._public_session(session), created=now))
            success = session["success_url"].replace("{CHECKOUT_SESSION_ID}", session_id)
        self.send(events)
        return success

    def subscription_update(self, subscription_id: str, *, status: str | None = None, price_id: str | None = None) -> SentEvent:
        with self.lock:
            subscription = self.subscriptions[subscription_id]
            previous: dict[str, Any] = {}
            if status is not None:
                previous["status"] = subscription["status"]
                subscription["status"] = status
            if price_id is not None:
                previous["items"] = json.loads(json.dumps(subscription["items"]))
                subscription["items"]["data"][0]["price"] = self.prices[price_id]
            event = self._event("customer.subscription.updated", subscription, previous=previous)
        self.send([event])
        return event

    def subscription_cancel(self, subscription_id: str) -> SentEvent:
        with self.lock:
            subscription = self.subscriptions[subscription_id]
            subscription["status"] = "canceled"
            subscription["canceled_at"] = self.now()
            event = self._event("customer.subscription.deleted", subscription)
        self.send([event])
        return event

    def send(self, events: list[SentEvent]) -> None:
        """Deliver events to webhook_url in order, one attempt each (a test replays with `resend`)."""
        url = self.webhook_url
        if not url:
            return
        for event in events:
            self.resend(event)

    def resend(self, event: SentEvent) -> int:
        assert self.webhook_url, "no webhook_url to deliver to"
        try:
            status = httpx.post(self.webhook_url, content=event.payload, headers=event.headers, timeout=15).status_code
        except httpx.HTTPError:
            status = 0
        with self.lock:
            event.deliveries.append(status)
        return status

    def _event(
        self, event_type: str, obj: dict[str, Any], *, created: int | None = None, previous: dict[str, Any] | None = None
    ) -> SentEvent:
        data: dict[str, Any] = {"object": json.loads(json.dumps(obj))}
        if previous:
            data["previous_attributes"] = previous
        body = {
            "id": _new_id("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": self.now() if created is None else created,
            "data": data,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": event_type,
        }
        payload = json.dumps(body, indent=2).encode()  # Stripe sends pretty-printed JSON; the signature covers these bytes
        event = SentEvent(body["id"], event_type, payload, sign_payload(payload, self.webhook_secret))
        self.events.append(event)
        return event

    # --- the API ------------------------------------------------------------------------------------------------------
    def customer_create(self, params: dict[str, Any]) -> dict[str, Any]:
        customer = {
            "id": _new_id("cus"),
            "object": "customer",
            "created": self.now(),
            "email": params.get("email"),
            "name": params.get("name"),
            "description": params.get("description"),
            "metadata": params.get("metadata") or {},
            "livemode": False,
        }
        self.customers[customer["id"]] = customer
        return customer

    def customer_retrieve(self, customer_id: str) -> dict[str, Any]:
        if customer_id not in self.customers:
            raise _no_such("customer", customer_id)
        return self.customers[customer_id]

    def price_retrieve(self, price_id: str) -> dict[str, Any]:
        if price_id not in self.prices:
            raise _no_such("price", price_id)
        return self.prices[price_id]

    def session_create(self, params: dict[str, Any]) -> dict[str, Any]:
        mode = params.get("mode")
        if mode is None:
            raise _missing("mode")
        if mode not in ("payment", "subscription"):
            raise StripeError(400, "invalid_request_error", f"Invalid mode: {mode}", param="mode")
        if not params.get("success_url"):
            raise _missing("success_url")
        customer = params.get("customer")
        if customer is not None and customer not in self.customers:
            raise _no_such("customer", customer, "customer")
        items = params.get("line_items")
        if not isinstance(items, list) or not items:
            raise _missing("line_items")
        amount_total = 0
        stored_items: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            quantity = _int(item.get("quantity", "1"), f"line_items[{index}][quantity]")
            if "price" in item:
                price = self.prices.get(item["price"])
                if price is None:
                    raise _no_such("price", item["price"], f"line_items[{index}][price]")
                if mode == "payment" and price["type"] == "recurring":
                    raise StripeError(
                        400,
                        "invalid_request_error",
                        "You must provide at least one recurring price in `subscription` mode when using prices.",
                    )
                unit_amount = price["unit_amount"]
                stored_items.append({"price": price["id"], "quantity": quantity})
            elif "price_data" in item:
                data = item["price_data"]
                for name in ("currency", "unit_amount"):
                    if name not in data:
                        raise _missing(f"line_items[{index}][price_data][{name}]")
                if "product" not in data and "name" not in data.get("product_data", {}):
                    raise _missing(f"line_items[{index}][price_data][product_data][name]")
                unit_amount = _int(data["unit_amount"], f"line_items[{index}][price_data][unit_amount]")
                stored_items.append({"price_data": data, "quantity": quantity})
            else:
                raise _missing(f"line_items[{index}][price]")
            amount_total += unit_amount * quantity
        if mode == "subscription" and not any("price" in item for item in stored_items):
            raise _missing("line_items[0][price]")
        if mode == "payment" and amount_total < 50:
            raise StripeError(
                400, "invalid_request_error", "The Checkout Session's total amount due must add up to at least $0.50 usd",
                code="amount_too_small",
            )  # fmt: skip
        session_id = _new_id("cs")
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": mode,
            "status": "open",
            "payment_status": "unpaid",
            "amount_total": amount_total,
            "amount_subtotal": amount_total,
            "currency": "usd",
            "customer": customer,
            "client_reference_id": params.get("client_reference_id"),
            "metadata": params.get("metadata") or {},
            "success_url": params["success_url"],
            "cancel_url": params.get("cancel_url"),
            "payment_intent": None,
            "subscription": None,
            "created": self.now(),
            "expires_at": self.now() + 24 * 3600,
            "url": f"{self.base_url}/c/pay/{session_id}",
            "livemode": False,
            # kept for completing the session, not shown by the API
            "line_items": stored_items,
            "subscription_data": params.get("subscription_data") or {},
        }
        self.sessions[session_id] = session
        return self._public_session(session)

    def session_retrieve(self, session_id: str) -> dict[str, Any]:
        if session_id not in self.sessions:
            raise _no_such("checkout.session", session_id)
        return self._public_session(self.sessions[session_id])

    def portal_session_create(self, params: dict[str, Any]) -> dict[str, Any]:
        customer = params.get("customer")
        if not customer:
            raise _missing("customer")
        if customer not in self.customers:
            raise _no_such("customer", customer, "customer")
        portal_id = _new_id("bps")
        portal = {
            "id": portal_id,
            "object": "billing_portal.session",
            "customer": customer,
            "return_url": params.get("return_url"),
            "created": self.now(),
            "url": f"{self.base_url}/p/session/{portal_id}",
            "livemode": False,
        }
        self.portal_sessions[portal_id] = portal
        return portal

    @staticmethod
    def _public_session(session: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in session.items() if k not in ("line_items", "subscription_data")}


def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers={"Request-Id": f"req_{secrets.token_hex(7)}", **(headers or {})})


def create_app(fake: FakeStripe) -> web.Application:
    routes: list[tuple[str, str, Any]] = [
        ("POST", "/v1/customers", lambda params, _m: fake.customer_create(params)),
        ("GET", "/v1/customers/{id}", lambda _p, match: fake.customer_retrieve(match["id"])),
        ("POST", "/v1/checkout/sessions", lambda params, _m: fake.session_create(params)),
        ("GET", "/v1/checkout/sessions/{id}", lambda _p, match: fake.session_retrieve(match["id"])),
        ("POST", "/v1/billing_portal/sessions", lambda params, _m: fake.portal_session_create(params)),
        ("GET", "/v1/prices/{id}", lambda _p, match: fake.price_retrieve(match["id"])),
    ]

    def api_handler(method: str, operation: Any) -> Any:
        async def handle(request: web.Request) -> web.Response:
            raw = await request.text()
            try:
                params = decode_form(parse_qsl(raw if method == "POST" else request.query_string, keep_blank_values=True))
            except StripeError as err:
                return _json(err.body(), err.status)
            authorization = request.headers.get("Authorization", "")
            authorized = secrets.compare_digest(authorization.encode(), f"Bearer {fake.secret_key}".encode())
            key = request.headers.get("Idempotency-Key")
            with fake.lock:
                fake.requests.append(
                    RecordedRequest(method, request.path, params, authorized, key, request.headers.get("Stripe-Version"))
                )
                if fake.fail_next > 0:
                    fake.fail_next -= 1
                    return _json({"error": {"type": "api_error", "message": "Something went wrong on Stripe's end."}}, 500)
                if not authorization:
                    return _json({"error": {"type": "invalid_request_error", "message": "You did not provide an API key."}}, 401)
                if not authorized:
                    shown = authorization.removeprefix("Bearer ")[-4:]
                    message = f"Invalid API Key provided: sk_test_****{shown}"
                    return _json({"error": {"type": "invalid_request_error", "message": message}}, 401)
                if method == "POST" and key:
                    seen = fake.idempotent.get(key)
                    if seen is not None:
                        if (seen[0], seen[1]) != (request.path, params):
                            message = "Keys for idempotent requests can only be used with the same parameters they were first used with."
                            return _json({"error": {"type": "idempotency_error", "message": message}}, 400)
                        return _json(seen[3], seen[2], {"Idempotent-Replayed": "true"})
                try:
                    status, body = 200, operation(params, request.match_info)
                except StripeError as err:
                    status, body = err.status, err.body()
                if method == "POST" and key:
                    fake.idempotent[key] = (request.path, params, status, body)
            return _json(body, status)

        return handle

    async def pay_page(request: web.Request) -> web.Response:
        with fake.lock:
            session = fake.sessions.get(request.match_info["id"])
            if session is None:
                return web.Response(status=404, text="This Checkout Session does not exist.")
            amount = f"${session['amount_total'] // 100}.{session['amount_total'] % 100:02d}"
            what = "per month" if session["mode"] == "subscription" else "once"
            cancel = session.get("cancel_url") or "/"
            state = session["status"]
        page = f"""<!doctype html><html><head><title>Fake Stripe Checkout</title></head><body>
<h1>Fake Stripe Checkout</h1><p id="amount">{html.escape(amount)} {what}</p><p id="status">{html.escape(state)}</p>
<form method="post"><button id="pay" type="submit">Pay {html.escape(amount)}</button></form>
<p><a id="cancel" href="{html.escape(cancel)}">Cancel</a></p></body></html>"""
        return web.Response(text=page, content_type="text/html")

    async def pay(request: web.Request) -> web.Response:
        try:
            # Delivering the webhooks waits on our own endpoint: off the event loop, which serves other calls meanwhile.
            success = await asyncio.get_running_loop().run_in_executor(None, fake.complete_session, request.match_info["id"])
        except StripeError as err:
            return web.Response(status=err.status, text=err.message)
        raise web.HTTPSeeOther(success)

    async def portal_page(request: web.Request) -> web.Response:
        with fake.lock:
            portal = fake.portal_sessions.get(request.match_info["id"])
        if portal is None:
            return web.Response(status=404, text="This portal session does not exist.")
        page = f"""<!doctype html><html><head><title>Fake Stripe customer portal</title></head><body>
<h1>Fake Stripe customer portal</h1><p id="customer">{html.escape(portal["customer"])}</p>
<p><a id="return" href="{html.escape(portal["return_url"] or "/")}">Return</a></p></body></html>"""
        return web.Response(text=page, content_type="text/html")

    app = web.Application()
    for method, path, operation in routes:
        app.router.add_route(method, path, api_handler(method, operation))
    app.router.add_get("/c/pay/{id}", pay_page)
    app.router.add_post("/c/pay/{id}", pay)
    app.router.add_get("/p/session/{id}", portal_page)
    return app


class FakeStripeServer(BackgroundServer):
    """Serves the fake from a thread of its own (the simulator's BackgroundServer); `fake` is its state."""

    thread_name = "fake-stripe"

    def __init__(self, *, secret_key: str, webhook_secret: str, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.fake = FakeStripe(secret_key=secret_key, webhook_secret=webhook_secret)

    def make_app(self) -> web.Application:
        return create_app(self.fake)

    def start(self) -> FakeStripeServer:
        super().start()
        self.fake.base_url = self.base_url
        return self


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake Stripe API and Checkout page for manual runs of the portal.")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--secret-key", default="sk_test_fake")
    parser.add_argument("--webhook-secret", default="whsec_fake")
    parser.add_argument("--webhook-url", default="http://127.0.0.1:8000/stripe/webhook")
    parser.add_argument("--price", action="append", default=[], help="a recurring price to offer: <id>=<cents>, repeatable")
    args = parser.parse_args()
    server = FakeStripeServer(secret_key=args.secret_key, webhook_secret=args.webhook_secret, port=args.port).start()
    server.fake.webhook_url = args.webhook_url
    for spec in args.price:
        price_id, _, cents = spec.partition("=")
        server.fake.price_add(price_id=price_id, unit_amount=int(cents))
    print(f"fake Stripe on {server.base_url}; webhooks to {args.webhook_url}; Ctrl-C stops it")
    print(
        f"PORTAL_STRIPE_API_BASE={server.base_url} PORTAL_STRIPE_SECRET_KEY={args.secret_key} "
        f"PORTAL_STRIPE_WEBHOOK_SECRET={args.webhook_secret}"
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
