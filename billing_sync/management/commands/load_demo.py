"""`manage.py load_demo`: a small, believable billing history for the portal (development only).

Sets up entity US01 (USD) as `setup_entity` does, creates one user per role with a known password, and
sends a fixed billing history through the same write path as the API (`receive_event`, as the
`billing` integration user), then does the worker's job inline: it processes each accepted event and
posts the journals that are ready through the built-in ERP connector, so the demo needs no Celery
worker and no broker. Nothing is sent to the broker while it runs (see `_inline_worker`).

Every event has a stable `event_id`, so a rerun is a replay of the same identities: it creates no
second event, document or journal. Only the `billing` API token is new on each run (the raw token is
never stored, so it cannot be printed again); the previous demo token is revoked.

The passwords come from TIEOUT_DEMO_PASSWORD, else the documented development default below. Never run
this against a production database: the command refuses production settings.

The last line of stdout is the portal URL, for scripts (`make run` prints the whole block).
"""
import json
import os
from contextlib import contextmanager
from unittest import mock

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from billing_sync import services as billing
from billing_sync import tokens
from billing_sync.authentication import hash_token
from billing_sync.models import ApiToken, Event
from config import correlation, roles
from exceptions_queue import services as queue
from exceptions_queue.models import Approval, ExceptionRecord
from ledger import services as ledger
from ledger.models import Journal

DEMO_PASSWORD_DEFAULT = "tieout-demo-2026"  # development only; documented in README and printed below
ENTITY = "US01"
CURRENCY = "USD"
SOURCE = "demo-billing"
TOKEN_NAME = "load_demo"
ACTOR = "cli:load_demo"

# (username, role, what the person does in the demo)
USERS = [
    ("billing", roles.INTEGRATION, "source system: sends events (API token below)"),
    ("ops", roles.FINANCE_OPS, "works the exception queue"),
    ("controller", roles.CONTROLLER, "approves credit notes and write-offs"),
    ("controller2", roles.CONTROLLER, "second approver (credit notes from 10,000.00)"),
    ("auditor", roles.AUDITOR, "reads everything, exports evidence"),
    ("admin", roles.ADMIN, "administration (Django admin too)"),
]


# ------------------------------------------------------------------------------------------- payloads
def _event(seq: int, type_: str, occurred_at: str, data: dict) -> dict:
    return {"schema_version": "1", "source_system": SOURCE, "event_id": f"demo-evt-{seq:04d}", "type": type_,
            "occurred_at": occurred_at, "entity": ENTITY, "data": data}


def _customer(customer_id, name, email, version=1):
    return {"customer_id": customer_id, "name": name, "email": email, "country": "US", "version": version}


def _invoice(invoice_id, number, customer_id, issue_date, due_date, lines, version=1):
    """`lines` are (description, amount, tax) with amounts as decimal strings; tax in US-CA at 7.25%."""
    from decimal import Decimal

    out, subtotal, tax_total = [], Decimal("0.00"), Decimal("0.00")
    for index, (description, amount, tax) in enumerate(lines, start=1):
        taxes = [{"jurisdiction": "US-CA", "rate": "0.0725", "amount": tax}] if Decimal(tax) else []
        out.append({"line_id": f"{invoice_id}-l{index}", "description": description, "amount": amount,
                    "taxes": taxes})
        subtotal += Decimal(amount)
        tax_total += Decimal(tax)
    return {"invoice_id": invoice_id, "number": number, "customer_id": customer_id, "currency": CURRENCY,
            "issue_date": issue_date, "due_date": due_date, "lines": out, "subtotal": f"{subtotal:.2f}",
            "tax_total": f"{tax_total:.2f}", "total": f"{subtotal + tax_total:.2f}", "version": version}


def _payment(payment_id, customer_id, amount, received_at, allocations, fee=None, method="card"):
    data = {"payment_id": payment_id, "customer_id": customer_id, "currency": CURRENCY, "amount": amount,
            "received_at": received_at, "method": method,
            "allocations": [{"invoice_id": i, "amount": a} for i, a in allocations]}
    if fee:
        data["fee"] = fee
    return data


def demo_events() -> list[dict]:
    """The fixed history, in the order a billing platform would have sent it (identities never change)."""
    e = []

    def add(type_, at, data):
        e.append(_event(len(e) + 1, type_, at, data))

    # Five customers.
    add("customer.upserted", "2026-10-01T09:00:00Z", _customer("cus_acme", "Acme Corp", "ap@acme.example"))
    add("customer.upserted", "2026-10-01T09:01:00Z", _customer("cus_globex", "Globex Corporation",
                                                               "payables@globex.example"))
    add("customer.upserted", "2026-10-01T09:02:00Z", _customer("cus_initech", "Initech", "finance@initech.example"))
    add("customer.upserted", "2026-10-01T09:03:00Z", _customer("cus_umbrella", "Umbrella Health",
                                                               "ap@umbrella.example"))
    add("customer.upserted", "2026-10-01T09:04:00Z", _customer("cus_hooli", "Hooli", "billing@hooli.example"))

    # Twelve invoices.
    inv = [
        ("inv_1001", "INV-1001", "cus_acme", "2026-10-02", [("Platform subscription, October", "1200.00", "87.00")]),
        ("inv_1002", "INV-1002", "cus_acme", "2026-10-05", [("Extra seats (5)", "450.00", "32.63")]),
        ("inv_1003", "INV-1003", "cus_globex", "2026-10-06", [("Enterprise plan, Q4", "2500.00", "181.25")]),
        ("inv_1004", "INV-1004", "cus_globex", "2026-10-08", [("Annual platform licence", "12000.00", "870.00"),
                                                              ("Implementation services", "3000.00", "217.50")]),
        ("inv_1005", "INV-1005", "cus_initech", "2026-10-09", [("Team plan, October", "800.00", "58.00")]),
        ("inv_1006", "INV-1006", "cus_initech", "2026-10-12", [("Training workshop", "300.00", "0")]),
        ("inv_1007", "INV-1007", "cus_umbrella", "2026-10-14", [("Health-data connector", "5000.00", "362.50")]),
        ("inv_1008", "INV-1008", "cus_umbrella", "2026-10-15", [("Support add-on", "640.00", "46.40")]),
        ("inv_1009", "INV-1009", "cus_hooli", "2026-10-20", [("Growth plan, October", "980.00", "71.05")]),
        ("inv_1010", "INV-1010", "cus_hooli", "2026-10-21", [("API usage overage", "2200.00", "159.50")]),
        ("inv_1011", "INV-1011", "cus_acme", "2026-11-02", [("Platform subscription, November", "1200.00", "87.00"),
                                                            ("Premium support, November", "250.00", "18.13")]),
        ("inv_1012", "INV-1012", "cus_globex", "2026-11-03", [("Usage overage, October", "750.00", "54.38")]),
    ]
    for invoice_id, number, customer_id, issued, lines in inv:
        year, month, day = issued.split("-")
        due = f"{year}-{int(month) + 1:02d}-{day}"
        add("invoice.issued", f"{issued}T10:00:00Z", _invoice(invoice_id, number, customer_id, issued, due, lines))

    # An amendment (Initech's team plan grew before payment) and a void (workshop cancelled).
    add("invoice.amended", "2026-10-16T11:00:00Z", _invoice(
        "inv_1005", "INV-1005", "cus_initech", "2026-10-09", "2026-11-09",
        [("Team plan, October (12 seats)", "900.00", "65.25")], version=2))
    add("invoice.voided", "2026-10-17T08:30:00Z", {"invoice_id": "inv_1006", "reason": "workshop cancelled"})

    # Payments: two in full (one with a card fee), two partial, one with unapplied cash.
    add("payment.received", "2026-10-20T14:00:00Z", _payment(
        "pay_2001", "cus_acme", "1287.00", "2026-10-20T14:00:00Z", [("inv_1001", "1287.00")], fee="37.62"))
    add("payment.received", "2026-10-22T09:15:00Z", _payment(
        "pay_2002", "cus_acme", "200.00", "2026-10-22T09:15:00Z", [("inv_1002", "200.00")]))
    add("payment.received", "2026-10-28T16:40:00Z", _payment(
        "pay_2003", "cus_globex", "2681.25", "2026-10-28T16:40:00Z", [("inv_1003", "2681.25")], fee="78.05",
        method="ach"))
    add("payment.received", "2026-10-30T10:05:00Z", _payment(
        "pay_2004", "cus_umbrella", "2000.00", "2026-10-30T10:05:00Z", [("inv_1007", "2000.00")], method="wire"))
    add("payment.received", "2026-11-04T12:00:00Z", _payment(
        "pay_2005", "cus_hooli", "3000.00", "2026-11-04T12:00:00Z", [("inv_1010", "2359.50")], method="wire"))
    # Hooli's unapplied cash is partly applied to another invoice, and part of it refunded.
    add("payment.applied", "2026-11-06T09:00:00Z", {"payment_id": "pay_2005",
                                                    "allocations": [{"invoice_id": "inv_1009", "amount": "400.00"}]})
    add("payment.refunded", "2026-11-09T15:30:00Z", {"refund_id": "re_3001", "payment_id": "pay_2005",
                                                     "amount": "100.00", "currency": CURRENCY})

    # A small credit note (posts at once), a write-off and a large credit note (both await approval).
    add("credit_note.issued", "2026-11-10T10:00:00Z", {
        "credit_note_id": "cn_4001", "invoice_id": "inv_1009", "currency": CURRENCY, "amount": "50.00",
        "taxes": [{"jurisdiction": "US-CA", "amount": "3.63"}], "reason": "service credit: outage on 2026-10-24"})
    add("write_off.requested", "2026-11-12T10:00:00Z", {
        "write_off_id": "wo_5001", "invoice_id": "inv_1008", "currency": CURRENCY, "amount": "686.40",
        "reason": "uncollectible: customer disputes the support add-on"})
    add("credit_note.issued", "2026-11-13T10:00:00Z", {
        "credit_note_id": "cn_4002", "invoice_id": "inv_1004", "currency": CURRENCY, "amount": "12000.00",
        "taxes": [{"jurisdiction": "US-CA", "amount": "870.00"}], "reason": "licence downgraded to monthly billing"})

    # A payment for an invoice that never arrived: waits in the queue (awaiting_dependency).
    add("payment.received", "2026-11-16T13:20:00Z", _payment(
        "pay_2006", "cus_initech", "500.00", "2026-11-16T13:20:00Z", [("inv_1099", "500.00")], method="ach"))
    return e


# ------------------------------------------------------------------------------------------- the command
@contextmanager
def _inline_worker():
    """Run without the broker: the after-commit hand-offs to Celery become no-ops while this command runs.

    Receiving an event schedules `process_events`, and writing a ready journal relays its outbox row to
    `post_journal`, both after commit. This command does that work itself, right away, so nothing needs
    to reach Redis (which may not run yet, and a publish to a dead broker retries for seconds). Anything
    left behind (an outbox row, an accepted event) is what the periodic sweeps exist for.
    """
    with mock.patch.object(billing, "schedule_processing", lambda event_ids: None), \
            mock.patch.object(ledger, "relay", lambda outbox_ids: None):
        yield


class Command(BaseCommand):
    help = ("Load demo data (development only): entity US01, one user per role, and a billing history "
            "processed and posted. Idempotent.")

    def add_arguments(self, parser):
        parser.add_argument("--allow-production-settings", action="store_true",
                            help="Run even under config.settings.prod (it creates users with a known password).")

    def handle(self, *args, allow_production_settings=False, **options):
        if settings.SETTINGS_MODULE.endswith(".prod") and not allow_production_settings:
            raise CommandError("load_demo creates users with a known password; it refuses production settings.")
        password = os.environ.get("TIEOUT_DEMO_PASSWORD") or DEMO_PASSWORD_DEFAULT
        password_from_env = bool(os.environ.get("TIEOUT_DEMO_PASSWORD"))
        try:
            validate_password(password)
        except ValidationError as exc:
            self.stderr.write(f"warning: the demo password is weak: {' '.join(exc.messages)}")

        with correlation.bound(None), _inline_worker():
            entity = self._entity()
            token = self._users(password)
            billing_user = get_user_model().objects.get(username="billing")
            counts = self._history(billing_user)
            self._drain()
            posted = self._post_ready()

        self._report(entity, counts, posted, token, password if not password_from_env else None)

    # -------------------------------------------------------------------------------------- steps
    def _entity(self):
        with transaction.atomic():
            entity, _ = ledger.entity_setup(code=ENTITY, currency=CURRENCY, name="Tieout Demo Inc. (US)",
                                            actor=ACTOR)
            queue.approval_policy_ensure(entity=entity, actor=ACTOR)
        return entity

    def _users(self, password: str) -> str:
        """Create the users (only what is missing changes on a rerun); return a fresh `billing` token."""
        User = get_user_model()
        raw_billing = None
        for username, role, _ in USERS:
            user = User.objects.filter(username=username).first()
            up_to_date = (user is not None and roles.has_role(user, role) and user.check_password(password))
            if username == "billing":
                raw_billing = tokens.token_issue(username=username, role=role, password=None if up_to_date
                                                 else password, name=TOKEN_NAME, actor=ACTOR)
            elif not up_to_date:
                tokens.token_issue(username=username, role=role, password=password, name=TOKEN_NAME, actor=ACTOR)
        # One live demo token for the source system: the earlier ones go.
        stale = ApiToken.objects.filter(user__username="billing", name=TOKEN_NAME, revoked_at__isnull=True).exclude(
            key_hash=hash_token(raw_billing)).values_list("pk", flat=True)
        for token_id in list(stale):
            tokens.token_revoke(token_id=token_id, actor=ACTOR)
        return raw_billing

    def _history(self, user) -> dict:
        counts = {"new": 0, "replayed": 0, "refused": 0}
        for payload in demo_events():
            body = json.dumps(payload).encode()
            with correlation.bound(None):  # one correlation id per delivery, as for separate requests
                answer = billing.receive_event(body=body, user=user, headers={}, remote_addr="127.0.0.1")
            if answer.status == 202:
                counts["new"] += 1
            elif answer.status == 200:
                counts["replayed"] += 1
            else:
                counts["refused"] += 1
                self.stderr.write(f"warning: {payload['event_id']} answered {answer.status}: "
                                  f"{answer.body.get('detail')}")
                continue
            event_id = json.loads(answer.raw)["id"]
            # A replay of an event that a crash left `accepted` is processed now; otherwise a no-op.
            billing.process_event(event_id=event_id, actor=ACTOR)
        return counts

    def _drain(self) -> None:
        """Events sent back to `accepted` (a dependency arrived) are processed too, as the worker would."""
        for _ in range(10):  # bounded: each round can only wake events that waited on the previous one
            ids = list(Event.objects.filter(source_system=SOURCE, status=Event.Status.ACCEPTED)
                       .order_by("received_at").values_list("pk", flat=True))
            if not ids:
                return
            for event_id in ids:
                billing.process_event(event_id=event_id, actor=ACTOR)

    def _post_ready(self) -> int:
        """Post every ready demo journal through the connector, oldest first (gapless JE numbers in order)."""
        posted = 0
        ids = (Journal.objects.filter(entity__code=ENTITY, source_system=SOURCE, status=Journal.Status.READY)
               .order_by("created_at", "id").values_list("pk", flat=True))
        for journal_id in list(ids):
            outcome = ledger.journal_post(journal_id=journal_id, actor=ACTOR)
            posted += outcome.status == Journal.Status.POSTED
        return posted

    def _report(self, entity, counts, posted_now, token, shown_password) -> None:
        events = Event.objects.filter(source_system=SOURCE)
        by_status = {}
        for status in events.values_list("status", flat=True):
            by_status[status] = by_status.get(status, 0) + 1
        journals = Journal.objects.filter(source_system=SOURCE)
        pending_approvals = Approval.objects.filter(entity=entity, status=Approval.Status.PENDING).count()
        open_exceptions = ExceptionRecord.objects.filter(event__source_system=SOURCE).exclude(
            status=ExceptionRecord.Status.RESOLVED).count()
        port = os.environ.get("PORT") or "8000"
        url = f"http://127.0.0.1:{port}/"
        w = self.stdout.write
        w(f"Demo data: entity {entity.code} ({entity.currency}), source system {SOURCE!r}")
        w(f"  events: {events.count()} ({counts['new']} new, {counts['replayed']} already loaded"
          f"{', %d refused' % counts['refused'] if counts['refused'] else ''}); by status: "
          + ", ".join(f"{k} {v}" for k, v in sorted(by_status.items())))
        w(f"  journals: {journals.filter(status=Journal.Status.POSTED).count()} posted ({posted_now} just now), "
          f"{journals.filter(status=Journal.Status.PENDING_APPROVAL).count()} awaiting approval; "
          f"approvals pending: {pending_approvals}; open exceptions: {open_exceptions}")
        w("")
        w("=" * 72)
        w("Tieout demo logins (DEVELOPMENT ONLY: known passwords, never use in production)")
        if shown_password:
            w(f"  password for every user: {shown_password}   (set TIEOUT_DEMO_PASSWORD to choose another)")
        else:
            w("  password for every user: the value of TIEOUT_DEMO_PASSWORD")
        for username, role, purpose in USERS:
            w(f"  {username:<12} {role:<12} {purpose}")
        w(f"  sign in at {url}accounts/login/")
        if settings.TIEOUT_2FA:
            w("  two-factor authentication is ON: controllers and admins enrol a TOTP app at first sign-in")
        else:
            w("  two-factor authentication is OFF for this demo (TIEOUT_2FA=off); TIEOUT_2FA=on make run requires it")
        w("")
        w("  API token of `billing` (integration), new on every run; earlier demo tokens are revoked:")
        w(f"  {token}")
        w(f"  e.g. curl -H 'Authorization: Bearer {token}' {url}api/v1/events")
        w("=" * 72)
        w(url)
