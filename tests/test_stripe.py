"""Payments through Stripe, against the fake Stripe API (tests/support/fake_stripe.py) with the real SDK and Stripe's
real signature scheme: top-ups credit the ledger exactly once, upgrades and cancellations move the plan, and forged,
stale, replayed or out-of-order events change nothing. PostgreSQL throughout."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from django.db import connection
from django.test import Client
from django.views.debug import get_default_exception_reporter_filter

from accounts.models import Organization
from billing.models import LedgerEntry, Plan, PlanSubscription, StripeEvent
from billing.selectors import organization_balance
from portal.views.payments import WEBHOOK_MAX_BYTES, parse_amount_cents
from portal_project.security import configured_secrets
from tests.support.fake_stripe import FakeStripe, FakeStripeServer, SentEvent, decode_form, sign_payload
from tests.support.portal import Team, ensure_site_and_plans, make_team, portal_settings  # noqa: F401
from tests.test_config import base_env, manage_check

SECRET_KEY = "sk_test_51FakeStripeSecretKeyForTheTestsOnly"
WEBHOOK_SECRET = "whsec_FakeWebhookSigningSecretForTheTests"
WEBHOOK = "/stripe/webhook"


@pytest.fixture(scope="module")
def stripe_server() -> Iterator[FakeStripeServer]:
    server = FakeStripeServer(secret_key=SECRET_KEY, webhook_secret=WEBHOOK_SECRET).start()
    yield server
    server.stop()


@pytest.fixture
def fake(stripe_server: FakeStripeServer, portal_settings) -> Iterator[FakeStripe]:  # noqa: ANN001, F811
    """The fake, emptied, and the portal pointed at it with payments on. Events wait in its outbox (no webhook_url):
    each test delivers them to the in-process portal, byte for byte as the fake signed them."""
    stripe_server.fake.reset()
    portal_settings.PORTAL_STRIPE_SECRET_KEY = SECRET_KEY
    portal_settings.PORTAL_STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    portal_settings.PORTAL_STRIPE_API_BASE = stripe_server.base_url
    portal_settings.PORTAL_TOPUP_MIN_CENTS = 500
    portal_settings.PORTAL_TOPUP_MAX_CENTS = 100_000
    yield stripe_server.fake
    stripe_server.fake.reset()


@pytest.fixture
def team(db, portal_settings) -> Team:  # noqa: ANN001, F811
    ensure_site_and_plans()
    return make_team()


def deliver(event: SentEvent, client: Client | None = None, *, signature: str | None = None, payload: bytes | None = None):  # noqa: ANN201
    """POST one event to the webhook endpoint as Stripe does."""
    return (client or Client()).post(
        WEBHOOK,
        data=event.payload if payload is None else payload,
        content_type="application/json; charset=utf-8",
        HTTP_STRIPE_SIGNATURE=event.signature if signature is None else signature,
    )


def top_up(team: Team, amount: str = "10", *, user=None, org: Organization | None = None):  # noqa: ANN001, ANN201
    client = team.client(user or team.owner)
    return client.post("/portal/billing/top-up", {"amount": amount, "org": (org or team.acme).slug})


def pay(checkout_url: str) -> str:
    """Press Pay on the fake's hosted page; returns where it sends the browser."""
    answer = httpx.post(checkout_url, follow_redirects=False, timeout=10)
    assert answer.status_code == 303, answer.text
    return answer.headers["location"]


def credits(org: Organization) -> list[LedgerEntry]:
    return list(LedgerEntry.objects.filter(organization=org, kind=LedgerEntry.Kind.CREDIT).order_by("id"))


# --- top-ups ----------------------------------------------------------------------------------------------------------


def test_a_top_up_sends_the_owner_to_checkout_for_that_amount_with_the_organization(team: Team, fake: FakeStripe) -> None:
    answer = top_up(team, "12.50")
    assert answer.status_code == 303
    [session_call] = fake.calls("POST", "/v1/checkout/sessions")
    session = fake.sessions[answer["Location"].rsplit("/", 1)[1]]
    assert answer["Location"] == session["url"] == f"{fake.base_url}/c/pay/{session['id']}"
    params = session_call.params
    assert session_call.authorized and session_call.idempotency_key
    assert params["mode"] == "payment"
    assert params["line_items"] == [
        {
            "quantity": "1",
            "price_data": {"currency": "usd", "unit_amount": "1250", "product_data": {"name": "Cortensor API credit"}},
        }
    ]
    assert params["client_reference_id"] == str(team.acme.pk)
    assert params["metadata"] == {"organization_id": str(team.acme.pk), "purpose": "topup", "user_id": str(team.owner.pk)}
    assert params["success_url"] == ("http://testserver/portal/billing?org=acme&checkout=topup&session_id={CHECKOUT_SESSION_ID}")
    assert params["cancel_url"] == "http://testserver/portal/billing?org=acme&checkout=cancelled"
    # The Stripe customer is made once and kept.
    team.acme.refresh_from_db()
    assert params["customer"] == team.acme.stripe_customer_id and team.acme.stripe_customer_id.startswith("cus_")
    customer = fake.customers[team.acme.stripe_customer_id]
    assert customer["metadata"] == {"organization_id": str(team.acme.pk), "organization_slug": "acme"}
    assert customer["email"] == team.owner.email
    assert top_up(team, "20", user=team.admin).status_code == 303
    assert len(fake.calls("POST", "/v1/customers")) == 1
    assert fake.calls("POST", "/v1/checkout/sessions")[1].params["customer"] == team.acme.stripe_customer_id


def test_paying_credits_the_exact_amount_once_and_a_replay_changes_nothing(team: Team, fake: FakeStripe) -> None:
    checkout_url = top_up(team, "10.01")["Location"]
    session_id = checkout_url.rsplit("/", 1)[1]
    back = pay(checkout_url)
    assert back == f"http://testserver/portal/billing?org=acme&checkout=topup&session_id={session_id}"
    [event] = fake.outbox
    assert event.type == "checkout.session.completed"

    answer = deliver(event)
    assert answer.status_code == 200 and answer.json() == {"received": True, "id": event.id, "outcome": "applied"}
    [credit] = credits(team.acme)
    assert credit.amount_micros == 10_010_000  # 1001 cents, exactly
    assert credit.memo == f"Stripe top-up, Checkout session {session_id}"
    assert credit.created_by == team.owner
    assert organization_balance(team.acme.pk) == 10_010_000
    record = StripeEvent.objects.get(event_id=event.id)
    assert (record.outcome, record.object_id, record.organization_id) == ("applied", session_id, team.acme.pk)

    for _ in range(2):  # Stripe retries, and a captured delivery sent again
        replay = deliver(event)
        assert replay.status_code == 200 and replay.json()["outcome"] == "duplicate"
    assert len(credits(team.acme)) == 1 and organization_balance(team.acme.pk) == 10_010_000

    # The page the customer comes back to says it is credited and shows the balance.
    page = team.client(team.owner).get(back).content.decode()
    assert "your payment is credited below" in page and 'id="kpi-balance"' in page and "$10.01" in page


def test_a_second_event_for_the_same_session_does_not_credit_it_again(team: Team, fake: FakeStripe) -> None:
    checkout_url = top_up(team)["Location"]
    pay(checkout_url)
    [completed] = fake.outbox
    assert deliver(completed).json()["outcome"] == "applied"
    # Stripe's async_payment_succeeded names the same session under a new event id.
    body = json.loads(completed.payload)
    body["id"], body["type"] = "evt_async_1", "checkout.session.async_payment_succeeded"
    payload = json.dumps(body).encode()
    again = deliver(completed, payload=payload, signature=sign_payload(payload, WEBHOOK_SECRET))
    assert again.status_code == 200 and again.json()["outcome"] == "ignored"
    assert StripeEvent.objects.get(event_id="evt_async_1").detail == "this session was credited already"
    assert [c.amount_micros for c in credits(team.acme)] == [10_000_000]


def test_an_unpaid_completed_session_credits_nothing(team: Team, fake: FakeStripe) -> None:
    pay(top_up(team)["Location"])
    [completed] = fake.outbox
    body = json.loads(completed.payload)
    body["data"]["object"]["payment_status"] = "unpaid"  # a bank debit still on its way
    payload = json.dumps(body).encode()
    answer = deliver(completed, payload=payload, signature=sign_payload(payload, WEBHOOK_SECRET))
    assert answer.status_code == 200 and answer.json()["outcome"] == "ignored"
    assert credits(team.acme) == []


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda e: (e.payload.replace(b'"amount_total": 1000', b'"amount_total": 9000'), e.signature), id="tampered"),
        pytest.param(lambda e: (e.payload, sign_payload(e.payload, "whsec_someone_else")), id="other-secret"),
        pytest.param(
            lambda e: (e.payload, sign_payload(e.payload, WEBHOOK_SECRET, timestamp=int(time.time()) - 600)), id="stale"
        ),
        pytest.param(lambda e: (e.payload, ""), id="no-signature"),
        pytest.param(lambda e: (e.payload, "t=1,v1=zz"), id="garbage-signature"),
    ],
)
def test_a_forged_or_stale_event_is_a_400_and_changes_nothing(team: Team, fake: FakeStripe, forge) -> None:  # noqa: ANN001
    pay(top_up(team)["Location"])
    [event] = fake.outbox
    payload, signature = forge(event)
    answer = deliver(event, payload=payload, signature=signature)
    assert answer.status_code == 400
    assert "signature" in answer.json()["error"]
    assert credits(team.acme) == [] and not StripeEvent.objects.exists()
    # The genuine one still goes through afterwards.
    assert deliver(event).json()["outcome"] == "applied"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"id": "evt_1", "type": "checkout.session.completed"}',
        b'{"id": 5, "data": {"object": {}}}',
        b"\xff\xfe",
    ],
)
def test_a_signed_body_that_is_not_an_event_is_a_400(fake: FakeStripe, db, body: bytes) -> None:  # noqa: ANN001
    event = SentEvent("evt_x", "x", body, sign_payload(body, WEBHOOK_SECRET))
    answer = deliver(event)
    assert answer.status_code == 400 and not StripeEvent.objects.exists()


def test_the_webhook_wants_post_bounds_the_body_and_is_off_without_payments(fake: FakeStripe, db, settings) -> None:  # noqa: ANN001
    assert Client().get(WEBHOOK).status_code == 405
    big = b"{" + b" " * WEBHOOK_MAX_BYTES + b"}"
    assert deliver(SentEvent("e", "x", big, sign_payload(big, WEBHOOK_SECRET))).status_code == 413
    settings.PORTAL_STRIPE_SECRET_KEY = settings.PORTAL_STRIPE_WEBHOOK_SECRET = ""
    assert deliver(SentEvent("e", "x", b"{}", sign_payload(b"{}", WEBHOOK_SECRET))).status_code == 404


def test_an_unknown_event_type_is_acknowledged_and_recorded_once(fake: FakeStripe, db) -> None:  # noqa: ANN001
    body = json.dumps({"id": "evt_inv", "object": "event", "type": "invoice.paid", "created": int(time.time()),
                       "data": {"object": {"id": "in_1", "object": "invoice"}}}).encode()  # fmt: skip
    event = SentEvent("evt_inv", "invoice.paid", body, sign_payload(body, WEBHOOK_SECRET))
    assert deliver(event).json()["outcome"] == "ignored"
    assert deliver(event).json()["outcome"] == "duplicate"
    assert StripeEvent.objects.get().object_id == "in_1"


@pytest.mark.django_db(transaction=True)
def test_two_deliveries_of_one_event_at_once_credit_once(fake: FakeStripe) -> None:
    ensure_site_and_plans()
    team = make_team()
    pay(top_up(team)["Location"])
    [event] = fake.outbox
    start = threading.Barrier(4)
    statuses: list[int] = []

    def post() -> None:
        try:
            start.wait()
            statuses.append(deliver(event).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=post) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 4
    assert [c.amount_micros for c in credits(team.acme)] == [10_000_000]
    assert StripeEvent.objects.filter(event_id=event.id).count() == 1


# --- who may pay, and bad input -------------------------------------------------------------------------------------


def test_members_outsiders_bad_amounts_and_get_are_refused_with_4xx(team: Team, fake: FakeStripe) -> None:
    member = top_up(team, user=team.member)
    assert member.status_code == 403 and "Only owners and admins of Acme pay for it." in member.content.decode()
    assert top_up(team, user=team.outsider).status_code == 404  # acme is not theirs: not found, never forbidden
    for amount in ("", "ten", "10.001", "-5", "1e3", "NaN", "99999999999", "10.5.5", "\x00"):
        answer = top_up(team, amount)
        assert answer.status_code == 400, amount
        assert "at most two decimals" in answer.content.decode()
    low, high = top_up(team, "4.99"), top_up(team, "1000.01")
    assert low.status_code == high.status_code == 400
    assert "A top-up is from $5.00 to $1,000.00." in low.content.decode()
    assert team.client(team.owner).get("/portal/billing/top-up").status_code == 405
    assert Client().post("/portal/billing/top-up", {"amount": "10"}).status_code == 302  # to sign-in
    assert fake.calls("POST", "/v1/checkout/sessions") == []


@pytest.mark.parametrize(("raw", "cents"), [("10", 1000), ("10.5", 1050), ("$1,000.00", 100_000), (" 0.07 ", 7), ("5.", None)])
def test_amounts_parse_to_exact_cents(raw: str, cents: int | None) -> None:
    assert parse_amount_cents(raw) == cents


def test_stripe_down_is_a_502_page_and_no_charge(team: Team, fake: FakeStripe, caplog: pytest.LogCaptureFixture) -> None:
    fake.fail_next = 100  # every try of the SDK's retries
    with caplog.at_level(logging.ERROR, logger="billing.payments"):
        answer = top_up(team)
    assert answer.status_code == 502
    assert "Stripe could not be reached just now; nothing was charged." in answer.content.decode()
    assert "stripe call failed while creating a customer: APIError" in caplog.text
    assert SECRET_KEY not in caplog.text and SECRET_KEY not in answer.content.decode()


def test_a_wrong_secret_key_is_a_502_and_the_key_is_not_logged(
    team: Team, fake: FakeStripe, settings, caplog: pytest.LogCaptureFixture
) -> None:  # noqa: ANN001
    settings.PORTAL_STRIPE_SECRET_KEY = "sk_test_51WrongKeyThatStripeDoesNotKnowAtAll"
    with caplog.at_level(logging.DEBUG):
        answer = top_up(team)
    assert answer.status_code == 502
    assert "AuthenticationError" in caplog.text
    assert "sk_test_51WrongKeyThatStripeDoesNotKnowAtAll" not in caplog.text


def test_without_a_secret_key_the_page_says_how_to_turn_payments_on(team: Team, settings) -> None:  # noqa: ANN001
    settings.PORTAL_STRIPE_SECRET_KEY = settings.PORTAL_STRIPE_WEBHOOK_SECRET = ""
    # A customer is not told the operator's settings: only that paying online is not offered, and where to write.
    settings.DEBUG, settings.PORTAL_SUPPORT_EMAIL = False, "billing@cortensor.test"
    page = team.client(team.owner).get("/portal/billing").content.decode()
    assert "PORTAL_STRIPE" not in page and 'href="mailto:billing@cortensor.test?subject=Credit%20for%20acme"' in page
    settings.DEBUG, settings.PORTAL_SUPPORT_EMAIL = True, ""  # make run: whoever reads the page runs the portal
    page = team.client(team.owner).get("/portal/billing").content.decode()
    assert 'Online payments are off on this portal: set <code class="mono">PORTAL_STRIPE_SECRET_KEY</code>' in page
    assert 'id="topup-form"' not in page and 'id="upgrade-form"' not in page
    # No dead end: the upgrade says what turns it on (the payments, a Stripe price, or an address to write to).
    assert "Cortensor team" not in page
    assert (
        '<p class="muted small compare-how" id="upgrade-off">Pro is not sold online on this portal: to sell it here, '
        "turn payments on (above) and give the plan a Stripe price"
    ) in page
    assert top_up(team).status_code == 404


def test_an_upgrade_not_sold_online_is_asked_for_by_mail_or_made_by_staff_in_the_admin(team: Team, settings) -> None:  # noqa: ANN001
    settings.PORTAL_STRIPE_SECRET_KEY = settings.PORTAL_STRIPE_WEBHOOK_SECRET = ""
    settings.PORTAL_SUPPORT_EMAIL = "sales@cortensor.example"
    page = team.client(team.owner).get("/portal/billing").content.decode()
    assert (
        'To move Acme to Pro, write to <a href="mailto:sales@cortensor.example?subject=Upgrade%20acme%20to%20Pro">'
        "sales@cortensor.example</a>"
    ) in page
    assert 'id="upgrade-off"' not in page

    settings.PORTAL_SUPPORT_EMAIL = ""
    team.owner.is_staff = True
    team.owner.save(update_fields=["is_staff"])
    page = team.client(team.owner).get("/portal/billing").content.decode()
    assert f'<a href="/admin/accounts/organization/{team.acme.pk}/change/">Change the plan of Acme in the admin</a>' in page
    assert 'id="upgrade-contact"' not in page and 'id="upgrade-off"' not in page


def test_the_billing_page_offers_payments_to_owners_and_admins_only(team: Team, fake: FakeStripe) -> None:
    for user in (team.owner, team.admin):
        page = team.client(user).get("/portal/billing").content.decode()
        assert 'id="topup-form"' in page and 'id="manage-form"' in page and 'min="5.00" max="1000.00"' in page
        assert "Manage cards and invoices" in page
    page = team.client(team.member).get("/portal/billing").content.decode()
    assert 'id="topup-form"' not in page and "owners and admins add credit" in page
    assert SECRET_KEY not in page and WEBHOOK_SECRET not in page


def test_manage_opens_the_customer_portal_of_the_organization(team: Team, fake: FakeStripe) -> None:
    answer = team.client(team.admin).post("/portal/billing/manage", {"org": "acme"})
    assert answer.status_code == 303
    team.acme.refresh_from_db()
    [portal] = fake.portal_sessions.values()
    assert answer["Location"] == portal["url"]
    assert portal["customer"] == team.acme.stripe_customer_id
    assert portal["return_url"] == "http://testserver/portal/billing?org=acme"


# --- plan upgrades through subscriptions ------------------------------------------------------------------------------


@pytest.fixture
def pro_price(fake: FakeStripe, team: Team) -> str:
    price_id = fake.price_add(unit_amount=4900)
    Plan.objects.filter(slug="pro").update(stripe_price_id=price_id, monthly_price_micros=49_000_000)
    return price_id


def subscribe(team: Team, fake: FakeStripe) -> tuple[SentEvent, SentEvent]:
    answer = team.client(team.owner).post("/portal/billing/upgrade", {"org": "acme", "plan": "pro"})
    assert answer.status_code == 303, answer.content
    pay(answer["Location"])
    created, completed = fake.outbox
    assert (created.type, completed.type) == ("customer.subscription.created", "checkout.session.completed")
    return created, completed


def plan_of(org: Organization) -> str:
    return Organization.objects.select_related("plan").get(pk=org.pk).plan.slug  # type: ignore[union-attr]


def test_an_upgrade_subscribes_to_the_plans_price_and_its_events_move_the_plan(
    team: Team, fake: FakeStripe, pro_price: str
) -> None:
    page = team.client(team.owner).get("/portal/billing").content.decode()
    assert "Upgrade to Pro for $49.00 a month" in page
    created, completed = subscribe(team, fake)
    [call] = fake.calls("POST", "/v1/checkout/sessions")
    assert call.params["mode"] == "subscription" and call.params["line_items"] == [{"price": pro_price, "quantity": "1"}]
    assert call.params["subscription_data"]["metadata"]["organization_id"] == str(team.acme.pk)

    assert deliver(created).json()["outcome"] == "applied"
    assert deliver(completed).json()["outcome"] == "ignored"  # the subscription's own events change the plan
    assert plan_of(team.acme) == "pro"
    assert PlanSubscription.objects.get(organization=team.acme, ended_at__isnull=True).plan.slug == "pro"
    assert credits(team.acme) == []
    # Already on Pro: upgrading again is a 400, not a second subscription.
    again = team.client(team.owner).post("/portal/billing/upgrade", {"org": "acme", "plan": "pro"})
    assert again.status_code == 400 and "already on Pro" in again.content.decode()
    # From a paid plan, another Checkout would bill a second subscription: the customer portal changes plans.
    Plan.objects.create(slug="team", name="Team", requests_per_minute=6000, stripe_price_id=fake.price_add(unit_amount=9900))
    other = team.client(team.owner).post("/portal/billing/upgrade", {"org": "acme", "plan": "team"})
    assert other.status_code == 400 and "Acme pays for Pro already" in other.content.decode()
    assert len(fake.calls("POST", "/v1/checkout/sessions")) == 1

    subscription_id = json.loads(created.payload)["data"]["object"]["id"]
    fake.advance(60)
    cancelled = fake.subscription_cancel(subscription_id)
    assert deliver(cancelled).json()["outcome"] == "applied"
    assert plan_of(team.acme) == "free"


def test_out_of_order_subscription_events_are_ignored(team: Team, fake: FakeStripe, pro_price: str) -> None:
    created, _ = subscribe(team, fake)
    subscription_id = json.loads(created.payload)["data"]["object"]["id"]
    fake.advance(10)
    past_due = fake.subscription_update(subscription_id, status="past_due")
    fake.advance(10)
    cancelled = fake.subscription_cancel(subscription_id)

    # Stripe does not promise order: the update arrives first, then the (older) created.
    assert deliver(past_due).json()["outcome"] == "applied"
    assert plan_of(team.acme) == "pro"  # past_due keeps the plan while Stripe retries
    late = deliver(created)
    assert late.json()["outcome"] == "ignored"
    assert StripeEvent.objects.get(event_id=created.id).detail == f"older than {past_due.id}, already applied"
    assert deliver(cancelled).json()["outcome"] == "applied"
    assert plan_of(team.acme) == "free"
    # A still older event showing the subscription active must not bring Pro back.
    assert deliver(created).json()["outcome"] == "duplicate"
    fake.advance(-5)
    stale = fake.subscription_update(subscription_id, status="active")
    assert deliver(stale).json()["outcome"] == "ignored"
    assert plan_of(team.acme) == "free"
    assert PlanSubscription.objects.filter(organization=team.acme).count() == 3  # free, pro, free


def test_a_subscription_for_a_price_no_plan_sells_changes_nothing(team: Team, fake: FakeStripe, pro_price: str) -> None:
    created, _ = subscribe(team, fake)
    Plan.objects.filter(slug="pro").update(stripe_price_id="price_retired")
    assert deliver(created).json()["outcome"] == "ignored"
    assert plan_of(team.acme) == "free"


def resigned(event: SentEvent, change) -> tuple[bytes, str]:  # noqa: ANN001
    """The event's body changed by `change` (a function of the parsed body), signed anew as Stripe would."""
    body = json.loads(event.payload)
    change(body)
    payload = json.dumps(body).encode()
    return payload, sign_payload(payload, WEBHOOK_SECRET)


def test_a_subscription_without_our_metadata_is_found_by_its_customer(team: Team, fake: FakeStripe, pro_price: str) -> None:
    created, _ = subscribe(team, fake)  # e.g. one started from the Dashboard, or by the customer portal
    payload, signature = resigned(created, lambda body: body["data"]["object"].update(metadata={}))
    assert deliver(created, payload=payload, signature=signature).json()["outcome"] == "applied"
    assert plan_of(team.acme) == "pro"


def test_events_naming_an_organization_that_is_not_theirs_change_nothing(team: Team, fake: FakeStripe, pro_price: str) -> None:
    created, _ = subscribe(team, fake)
    # The metadata names globex while the customer is acme's: neither is changed.
    payload, signature = resigned(
        created, lambda body: body["data"]["object"]["metadata"].update(organization_id=str(team.globex.pk))
    )
    assert deliver(created, payload=payload, signature=signature).json()["outcome"] == "ignored"
    assert plan_of(team.acme) == plan_of(team.globex) == "free"
    pay(top_up(team)["Location"])
    completed = fake.outbox[-1]
    payload, signature = resigned(completed, lambda body: body["data"]["object"]["metadata"].update(organization_id="999999"))
    assert deliver(completed, payload=payload, signature=signature).json()["outcome"] == "ignored"

    def to_globex(body: dict) -> None:
        body["id"] = "evt_to_globex"
        body["data"]["object"]["metadata"]["organization_id"] = body["data"]["object"]["client_reference_id"] = str(
            team.globex.pk
        )

    payload, signature = resigned(completed, to_globex)
    assert deliver(completed, payload=payload, signature=signature).json()["outcome"] == "ignored"
    assert StripeEvent.objects.get(event_id="evt_to_globex").detail == "the customer is not the organization's"
    assert not LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CREDIT).exists()


def test_a_plan_without_a_stripe_price_is_not_offered_or_sold(team: Team, fake: FakeStripe) -> None:
    page = team.client(team.owner).get("/portal/billing").content.decode()
    assert 'id="upgrade-form"' not in page and "Cortensor team" not in page
    assert 'id="upgrade-off">Pro is not sold online on this portal: to sell it here, give the plan a Stripe price' in page
    answer = team.client(team.owner).post("/portal/billing/upgrade", {"org": "acme", "plan": "pro"})
    assert answer.status_code == 400 and "Pro cannot be bought online." in answer.content.decode()
    assert team.client(team.owner).post("/portal/billing/upgrade", {"org": "acme", "plan": "nope"}).status_code == 400


# --- secrets and configuration ----------------------------------------------------------------------------------------


def test_the_stripe_secrets_are_hidden_from_debug_pages(fake: FakeStripe, settings) -> None:  # noqa: ANN001
    safe = get_default_exception_reporter_filter().get_safe_settings()
    assert safe["PORTAL_STRIPE_SECRET_KEY"] == safe["PORTAL_STRIPE_WEBHOOK_SECRET"] == "********************"
    assert {SECRET_KEY, WEBHOOK_SECRET} <= set(configured_secrets())
    assert SECRET_KEY not in repr(safe) and WEBHOOK_SECRET not in repr(safe)


def test_the_debug_500_page_shows_no_stripe_secret(fake: FakeStripe, settings) -> None:  # noqa: ANN001
    import sys

    from django.test import RequestFactory
    from django.views.debug import technical_500_response

    from billing.payments import stripe_client

    settings.DEBUG = True
    client = stripe_client()  # noqa: F841 -- a frame's local holding the key
    signature = f"t=1,v1=0 with {WEBHOOK_SECRET}"  # noqa: F841
    request = RequestFactory().post(WEBHOOK, data=b"{}", content_type="application/json", HTTP_STRIPE_SIGNATURE=WEBHOOK_SECRET)
    try:
        raise RuntimeError(f"failed with {SECRET_KEY}")
    except RuntimeError:
        page = technical_500_response(request, *sys.exc_info()).content.decode()
    assert "failed with" in page and "PORTAL_STRIPE_SECRET_KEY" in page
    assert SECRET_KEY not in page and WEBHOOK_SECRET not in page


@pytest.mark.parametrize(
    ("variable", "overrides"),
    [
        pytest.param("PORTAL_STRIPE_WEBHOOK_SECRET", {"PORTAL_STRIPE_SECRET_KEY": "sk_test_x"}, id="key-without-webhook-secret"),
        pytest.param("PORTAL_STRIPE_SECRET_KEY", {"PORTAL_STRIPE_SECRET_KEY": "pk_test_x", "PORTAL_STRIPE_WEBHOOK_SECRET": "whsec_x"}, id="publishable-key"),
        pytest.param("PORTAL_STRIPE_WEBHOOK_SECRET", {"PORTAL_STRIPE_SECRET_KEY": "sk_test_x", "PORTAL_STRIPE_WEBHOOK_SECRET": "x"}, id="webhook-secret-shape"),
        pytest.param("PORTAL_STRIPE_API_BASE", {"PORTAL_STRIPE_API_BASE": "api.stripe.com"}, id="api-base-no-scheme"),
        pytest.param("PORTAL_TOPUP_MIN_CENTS", {"PORTAL_TOPUP_MIN_CENTS": "10"}, id="min-below-stripe"),
        pytest.param("PORTAL_TOPUP_MAX_CENTS", {"PORTAL_TOPUP_MIN_CENTS": "1000", "PORTAL_TOPUP_MAX_CENTS": "999"}, id="max-below-min"),
    ],
)  # fmt: skip
def test_a_bad_stripe_setting_stops_start_up_in_one_line(variable: str, overrides: dict[str, str]) -> None:
    result = manage_check(base_env(**overrides))
    assert result.returncode != 0
    assert result.stderr.startswith(f"configuration error: {variable}: ") and result.stderr.count("\n") == 1, result.stderr


# --- the fake itself ------------------------------------------------------------------------------------------------


def test_the_fake_decodes_stripes_form_encoding() -> None:
    pairs = [
        ("line_items[0][price_data][unit_amount]", "1000"),
        ("line_items[1][price]", "p"),
        ("metadata[a]", "b"),
        ("mode", "payment"),
    ]
    assert decode_form(pairs) == {
        "line_items": [{"price_data": {"unit_amount": "1000"}}, {"price": "p"}],
        "metadata": {"a": "b"},
        "mode": "payment",
    }


def test_the_fake_replays_an_idempotent_request_and_refuses_other_params(stripe_server: FakeStripeServer) -> None:
    stripe_server.fake.reset()
    headers = {"Authorization": f"Bearer {SECRET_KEY}", "Idempotency-Key": "k1"}
    url = f"{stripe_server.base_url}/v1/customers"
    first = httpx.post(url, data={"name": "A"}, headers=headers)
    again = httpx.post(url, data={"name": "A"}, headers=headers)
    other = httpx.post(url, data={"name": "B"}, headers=headers)
    assert first.json()["id"] == again.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    assert other.status_code == 400 and other.json()["error"]["type"] == "idempotency_error"
    assert httpx.post(url, data={"name": "A"}).status_code == 401
    missing = httpx.get(f"{stripe_server.base_url}/v1/customers/cus_none", headers=headers)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "resource_missing"
