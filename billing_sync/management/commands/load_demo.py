"""`manage.py load_demo` (development only; refuses production settings): entities US01 (USD) and UK01 (GBP),
one user per role (password TIEOUT_DEMO_PASSWORD or the documented default) and a month of billing history
sent through `receive_event`, with approvals pending, exceptions of several codes and a closed previous month;
it runs the worker inline (`_inline_worker`, no Celery). History is anchored in the first event, so a rerun is
a replay; times are backdated (`_backdate`, `_ledger_clock`), the audit log keeps real ones. Each run issues a
new `billing` token, revoking the last; stdout ends with the portal URL."""
import datetime
import hashlib
import json
import os
import random
import contextlib
from contextlib import contextmanager
from decimal import Decimal
from unittest import mock

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction
from django.utils import timezone

from audit import services as audit
from billing_sync import services as billing
from billing_sync import tokens
from billing_sync.services import processing as billing_processing
from billing_sync.authentication import hash_token
from billing_sync.models import ApiToken, Event
from config import correlation, roles
from exceptions_queue import services as queue
from exceptions_queue.models import Approval, ApprovalDecision, ExceptionRecord
from ledger import services as ledger
from ledger.services import batches as ledger_batches
from ledger.services import outbox as ledger_outbox
from ledger.services import outcomes as ledger_outcomes
from ledger.services import posting as ledger_posting
from ledger.models import Journal, Period

DEMO_PASSWORD_DEFAULT = "tieout-demo-2026"  # development only; documented in README and printed below
SOURCE = "demo-billing"
TOKEN_NAME = "load_demo"
ACTOR = "cli:load_demo"
DAYS = 30  # the history covers the 30 days before the anchor

# (code, currency, name, country, tax jurisdiction, tax rate, customers, invoices)
ENTITIES = [
    ("US01", "USD", "Tieout Demo Inc. (US)", "US", "US-CA", Decimal("0.0725"), 26, 64),
    ("UK01", "GBP", "Tieout Demo Ltd (UK)", "GB", "GB-VAT", Decimal("0.20"), 10, 22),
]
ENTITY = ENTITIES[0][0]  # the first entity (kept for callers of the earlier single-entity demo)
CURRENCY = ENTITIES[0][1]

# (username, role, what the person does in the demo)
USERS = [
    ("billing", roles.INTEGRATION, "source system: sends events (API token below)"),
    ("ops", roles.FINANCE_OPS, "works the exception queue"),
    ("controller", roles.CONTROLLER, "approves credit notes and write-offs"),
    ("controller2", roles.CONTROLLER, "second approver (credit notes from 10,000.00)"),
    ("auditor", roles.AUDITOR, "reads everything, exports evidence"),
    ("admin", roles.ADMIN, "administration (Django admin too)"),
]

_COMPANIES = {
    "US01": ["Acme Corp", "Globex Corporation", "Initech", "Umbrella Health", "Hooli", "Stark Logistics",
             "Wayne Foods", "Cyberdyne Labs", "Soylent Nutrition", "Vandelay Industries", "Pied Piper",
             "Dunder Mifflin", "Monarch Analytics", "Tyrell Robotics", "Wonka Confections", "Oscorp Energy",
             "Massive Dynamic", "Aperture Science", "Gringotts Capital", "Bluth Company", "Prestige Worldwide",
             "Nakatomi Trading", "Sterling Cooper", "Buy n Large", "Virtucon", "Los Pollos Hermanos"],
    "UK01": ["Albion Freight", "Bramble & Co", "Cotswold Mills", "Dartmoor Digital", "Essex Analytics",
             "Fenwick Retail", "Greenwich Labs", "Harrow Health", "Islington Media", "Jubilee Foods"],
}
_PLANS = [("Starter plan", "480.00"), ("Team plan", "1200.00"), ("Growth plan", "2500.00"),
          ("Business plan", "3600.00"), ("Enterprise plan", "7500.00"), ("API usage", "860.40"),
          ("Support add-on", "640.00"), ("Implementation services", "3000.00")]


# ------------------------------------------------------------------------------------------- payloads
def _tax(amount: Decimal, rate: Decimal) -> Decimal:
    return (amount * rate).quantize(Decimal("0.01"))


class _History:
    """One entity's month, as the events a billing platform would have sent (identities never change).

    `at(days, minutes)` is a moment `days` before the anchor (minus `minutes`); everything is derived from
    the anchor and a random generator seeded with the entity's code, so the same anchor gives the same
    payloads. `late` events are sent after the previous month is closed.
    """

    def __init__(self, anchor: datetime.datetime, spec):
        self.anchor = anchor
        self.code, self.currency, _, self.country, self.jurisdiction, self.rate, n_customers, n_invoices = spec
        self.rng = random.Random(self.code)
        self.month_start = anchor.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        self.events, self.late = [], []
        self.prefix = self.code.lower()
        self.customers = [f"{self.prefix}-cus-{i:02d}" for i in range(1, n_customers + 1)]
        self.invoices: dict[str, dict] = {}
        self.n_invoices = n_invoices

    def at(self, days: float, minutes: int = 0) -> datetime.datetime:
        return self.anchor - datetime.timedelta(days=days, minutes=minutes)

    def this_month(self, minutes: int) -> datetime.datetime:
        """`minutes` before the anchor, but never before the 1st of its month (approvals must stay open)."""
        return max(self.anchor - datetime.timedelta(minutes=minutes),
                   min(self.month_start + datetime.timedelta(minutes=1), self.anchor))

    def add(self, type_: str, at: datetime.datetime, data: dict, *, late=False) -> None:
        (self.late if late else self.events).append(
            (at, {"schema_version": "1", "source_system": SOURCE, "type": type_,
                  "occurred_at": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "entity": self.code, "data": data}))

    # -------------------------------------------------------------------------------- documents
    def customer(self, customer_id: str, name: str, at) -> None:
        slug = "".join(ch for ch in name.lower() if ch.isalnum())[:20]
        self.add("customer.upserted", at, {"customer_id": customer_id, "name": name, "email": f"ap@{slug}.example",
                                           "country": self.country, "version": 1})

    def invoice(self, number: int, customer_id: str, at, lines, *, net_days=30, revenue_account=None) -> str:
        invoice_id = f"{self.prefix}-inv-{number}"
        out, subtotal, tax_total = [], Decimal("0.00"), Decimal("0.00")
        for index, (description, amount) in enumerate(lines, start=1):
            amount = Decimal(amount)
            tax = _tax(amount, self.rate)
            line = {"line_id": f"{invoice_id}-l{index}", "description": description, "amount": f"{amount:.2f}",
                    "taxes": [{"jurisdiction": self.jurisdiction, "rate": str(self.rate), "amount": f"{tax:.2f}"}]}
            if revenue_account:
                line["revenue_account"] = revenue_account
            out.append(line)
            subtotal += amount
            tax_total += tax
        issued = at.date()
        total = subtotal + tax_total
        self.add("invoice.issued", at, {
            "invoice_id": invoice_id, "number": f"{self.code[:2]}-{number}", "customer_id": customer_id,
            "currency": self.currency, "issue_date": issued.isoformat(),
            "due_date": (issued + datetime.timedelta(days=net_days)).isoformat(), "lines": out,
            "subtotal": f"{subtotal:.2f}", "tax_total": f"{tax_total:.2f}", "total": f"{total:.2f}", "version": 1})
        self.invoices[invoice_id] = {"customer": customer_id, "total": total, "tax": tax_total, "at": at}
        return invoice_id

    def payment(self, number: int, customer_id: str, at, amount, allocations, *, method="card", fee=None,
                currency=None, late=False) -> str:
        payment_id = f"{self.prefix}-pay-{number}"
        data = {"payment_id": payment_id, "customer_id": customer_id, "currency": currency or self.currency,
                "amount": f"{Decimal(amount):.2f}", "received_at": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "method": method, "allocations": [{"invoice_id": i, "amount": f"{Decimal(a):.2f}"}
                                                  for i, a in allocations]}
        if fee:
            data["fee"] = fee
        self.add("payment.received", at, data, late=late)
        return payment_id

    def credit_note(self, number: int, invoice_id: str, at, net: Decimal, reason: str) -> None:
        self.add("credit_note.issued", at, {
            "credit_note_id": f"{self.prefix}-cn-{number}", "invoice_id": invoice_id, "currency": self.currency,
            "amount": f"{net:.2f}", "taxes": [{"jurisdiction": self.jurisdiction,
                                               "amount": f"{_tax(net, self.rate):.2f}"}], "reason": reason})

    def write_off(self, number: int, invoice_id: str, at, amount: Decimal, reason: str) -> None:
        self.add("write_off.requested", at, {"write_off_id": f"{self.prefix}-wo-{number}", "invoice_id": invoice_id,
                                             "currency": self.currency, "amount": f"{amount:.2f}", "reason": reason})

    # -------------------------------------------------------------------------------- the month
    def build(self) -> "_History":
        rng = self.rng
        for index, (customer_id, name) in enumerate(zip(self.customers, _COMPANIES[self.code])):
            self.customer(customer_id, name, self.at(DAYS, 60 - index))

        # Invoices spread over the month, one or two lines each; a few on 14-day terms (overdue soon).
        fates = {}
        for i in range(self.n_invoices):
            days = DAYS - 1 - (DAYS - 2) * i / self.n_invoices
            lines = [rng.choice(_PLANS)]
            if rng.random() < 0.3:
                lines.append(rng.choice(_PLANS))
            invoice_id = self.invoice(1001 + i, self.customers[i % len(self.customers)],
                                      self.at(days, rng.randint(5, 600)), lines,
                                      net_days=14 if i % 5 == 0 else 30)
            fates[invoice_id] = rng.random()
        if self.code == "US01":  # the headline invoice of the walkthrough: 15,000.00 + 7.25% = 16,087.50
            big = self.invoice(1900, self.customers[1], self.at(21, 45),
                               [("Annual platform licence", "12000.00"), ("Implementation services", "3000.00")])
            fates[big] = 0.9  # unpaid: the two-approver credit note below is on it

        # Payments: most invoices paid in full within days, some in part, some not yet (open or overdue).
        pay_no = 2001
        for invoice_id, fate in fates.items():
            doc = self.invoices[invoice_id]
            paid_at = doc["at"] + datetime.timedelta(days=2 + rng.random() * 10, minutes=rng.randint(0, 300))
            if paid_at >= self.anchor - datetime.timedelta(minutes=10):
                continue
            if fate < 0.6:
                amount = doc["total"]
            elif fate < 0.75:
                amount = (doc["total"] / 2).quantize(Decimal("0.01"))
            else:
                continue
            method = rng.choice(["card", "ach", "wire"])
            fee = f"{(amount * Decimal('0.029')).quantize(Decimal('0.01'))}" if method == "card" else None
            self.payment(pay_no, doc["customer"], paid_at, amount, [(invoice_id, amount)], method=method, fee=fee)
            doc["paid"] = amount
            pay_no += 1

        unpaid = [i for i, d in self.invoices.items() if not d.get("paid")]
        # An early payment: cash before the customer's next invoice, unapplied until applied to it later.
        early_inv = unpaid[-2]
        early = self.invoices[early_inv]
        pay_id = self.payment(pay_no, early["customer"], early["at"] - datetime.timedelta(hours=20),
                              early["total"] + Decimal("250.00"), [], method="wire")
        pay_no += 1
        self.add("payment.applied", early["at"] + datetime.timedelta(hours=3),
                 {"payment_id": pay_id, "allocations": [{"invoice_id": early_inv, "amount": f"{early['total']:.2f}"}]})
        early["paid"] = early["total"]

        # Adjustments: a small credit note posts at once; the others wait for the controllers.
        paid_in_part = [i for i, d in self.invoices.items() if d.get("paid") and d["paid"] < d["total"]]
        open_ones = [i for i, d in self.invoices.items() if not d.get("paid") and i != f"{self.prefix}-inv-1900"]
        open_ones.sort(key=lambda i: -self.invoices[i]["total"])  # the largest first: room for the credits
        self.credit_note(4001, paid_in_part[0], self.at(9, 30), Decimal("50.00"), "service credit: outage")
        self.credit_note(4002, open_ones[0], self.this_month(60 * 50), Decimal("1100.00") if self.code == "US01"
                         else Decimal("400.00"), "price agreed before renewal was not applied")
        self.write_off(5001, open_ones[1], self.this_month(60 * 30), Decimal("180.00"),
                       "small balance after dispute; not worth collecting")
        if self.code == "US01":
            self.credit_note(4003, "us01-inv-1900", self.this_month(60 * 26), Decimal("12000.00"),
                             "licence downgraded to monthly billing")
            self.write_off(5002, open_ones[2], self.this_month(60 * 20), Decimal("95.00"), "bank charges short-paid")
            self.write_off(5003, open_ones[3], self.this_month(60 * 8), Decimal("310.00"), "customer in administration")

        # Exceptions: what stops in the queue, aged over the last days.
        c = self.customers
        if self.code == "US01":
            self.payment(2901, c[3], self.at(6, 200), "500.00", [(f"{self.prefix}-inv-9999", "500.00")], method="ach")
            self.invoice(1950, f"{self.prefix}-cus-99", self.at(4, 90), [("Team plan", "1200.00")])
            full = next(i for i, d in self.invoices.items() if d.get("paid") == d["total"] and i != early_inv)
            self.payment(2902, self.invoices[full]["customer"], self.at(3, 60), self.invoices[full]["total"],
                         [(full, self.invoices[full]["total"])], method="ach")  # paid twice: over-application
            self.invoice(1951, c[5], self.at(2, 120), [("Consulting (new service line)", "2200.00")],
                         revenue_account="4100")  # no such account in the chart: no_account_mapping
            # Dated on the last day of the closed month, delivered after the close: period_closed.
            last_day = self.month_start - datetime.timedelta(hours=6)
            late_inv = open_ones[4]
            self.payment(2903, self.invoices[late_inv]["customer"], last_day, "100.00", [(late_inv, "100.00")],
                         method="wire", late=True)
        else:
            self.payment(2901, c[2], self.at(5, 100), "300.00", [], currency="USD", method="wire")  # wrong currency
        self.events.sort(key=lambda pair: pair[0])
        return self


def demo_events(anchor: datetime.datetime | None = None) -> list[tuple[dict, bool]]:
    """(payload, late) for every demo event in sending order, with stable event ids; late ones come after
    the previous month is closed."""
    anchor = anchor or _anchor()
    out = []
    for spec in ENTITIES:
        history = _History(anchor, spec).build()
        for seq, (_, payload) in enumerate(history.events + history.late, start=1):
            payload["event_id"] = f"demo-{spec[0]}-{seq:04d}"
            out.append((payload, seq > len(history.events)))
    return out


def _anchor() -> datetime.datetime:
    """The moment of the first load: the first event (the first customer, DAYS before it) carries it."""
    first = Event.objects.filter(source_system=SOURCE, event_id=f"demo-{ENTITY}-0001").values_list(
        "payload", flat=True).first()
    if first:
        occurred = datetime.datetime.fromisoformat(first["occurred_at"].replace("Z", "+00:00"))
        return occurred + datetime.timedelta(days=DAYS, minutes=60)
    return timezone.now().replace(second=0, microsecond=0)


def _delay(event_id: str, low: int, high: int) -> int:
    """A stable pseudo-random number of seconds per event (the same on every run)."""
    return low + int(hashlib.sha256(event_id.encode()).hexdigest()[:8], 16) % (high - low)


# ------------------------------------------------------------------------------------------- the command
@contextmanager
def _inline_worker():
    """Run without the broker: the after-commit hand-offs to Celery become no-ops while this command runs.

    Receiving an event schedules `process_events`, and writing a ready journal relays its outbox row to
    `post_journal`, both after commit. This command does that work itself, right away, so nothing needs
    to reach Redis (which may not run yet, and a publish to a dead broker retries for seconds). Anything
    left behind (an outbox row, an accepted event) is what the periodic sweeps exist for.
    """
    with mock.patch.object(billing_processing, "events_schedule", lambda event_ids, routes=None: None), \
            mock.patch.object(ledger_outbox, "outbox_relay", lambda outbox_ids: None):
        yield


@contextmanager
def _ledger_clock(moment: datetime.datetime):
    """The ledger's clock (only `ledger.services`' own `timezone`) set to `moment` while one journal posts.

    A posted journal is immutable (a trigger refuses any UPDATE), so its posting time cannot be moved back
    afterwards like the other rows' times: it is posted "at" the moment the history says. Only the
    ledger posting modules' reference is replaced: the audit log keeps the real time.
    """
    class _Clock:
        def __getattr__(self, name):
            return getattr(timezone, name)

        @staticmethod
        def now():
            return moment

    with contextlib.ExitStack() as stack:
        for module in (ledger_posting, ledger_outcomes, ledger_batches):  # where posting times are set
            stack.enter_context(mock.patch.object(module, "timezone", _Clock()))
        yield


class Command(BaseCommand):
    help = ("Load demo data (development only): entities US01 (USD) and UK01 (GBP), one user per role, and a "
            "month of billing history processed, approved in part and posted. Idempotent.")

    def add_arguments(self, parser):
        parser.add_argument("--allow-production-settings", action="store_true",
                            help="Run even under config.settings.prod (it creates users with a known password).")

    def handle(self, *args, allow_production_settings=False, **options):
        # Under override_settings Django's holder has no SETTINGS_MODULE: the environment names it too.
        module = getattr(settings, "SETTINGS_MODULE", None) or os.environ.get("DJANGO_SETTINGS_MODULE", "")
        if module.endswith(".prod") and not allow_production_settings:
            raise CommandError("load_demo creates users with a known password; it refuses production settings.")
        password = os.environ.get("TIEOUT_DEMO_PASSWORD") or DEMO_PASSWORD_DEFAULT
        password_from_env = bool(os.environ.get("TIEOUT_DEMO_PASSWORD"))
        try:
            validate_password(password)
        except ValidationError as exc:
            self.stderr.write(f"warning: the demo password is weak: {' '.join(exc.messages)}")

        with correlation.bound(None), _inline_worker():
            entities = self._entities()
            token = self._users(password)
            User = get_user_model()
            billing_user = User.objects.get(username="billing")
            anchor = _anchor()
            events = demo_events(anchor)
            self._late_ids = {p["event_id"] for p, late in events if late}
            counts = {"new": 0, "replayed": 0, "refused": 0}
            self._history([p for p, late in events if not late], billing_user, counts)
            self._drain()
            self._backdate(anchor)
            self._fail_one_posting(anchor)
            posted = self._post_ready()
            self._close_previous_month(entities, anchor)
            self._history([p for p, late in events if late], billing_user, counts)
            self._backdate(anchor)
            self._decide(User)
            posted += self._post_ready()
            self._work_the_queue(User.objects.get(username="ops"), anchor)

        self._report(entities, counts, posted, token, password if not password_from_env else None)

    # -------------------------------------------------------------------------------------- steps
    def _entities(self) -> list:
        out = []
        for code, currency, name, *_ in ENTITIES:
            with transaction.atomic():
                entity, _ = ledger.entity_setup(code=code, currency=currency, name=name, actor=ACTOR)
                queue.approval_policy_ensure(entity=entity, actor=ACTOR)
            out.append(entity)
        return out

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

    def _history(self, payloads, user, counts) -> dict:
        for payload in payloads:
            body = json.dumps(payload).encode()
            with correlation.bound(None):  # one correlation id per delivery, as for separate requests
                answer = billing.event_receive(body=body, user=user, headers={}, remote_addr="127.0.0.1")
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
            billing.event_process(event_id=event_id, actor=ACTOR)
        return counts

    def _drain(self) -> None:
        """Events sent back to `accepted` (a dependency arrived) are processed too, as the worker would."""
        for _ in range(10):  # bounded: each round can only wake events that waited on the previous one
            ids = list(Event.objects.filter(source_system=SOURCE, status=Event.Status.ACCEPTED)
                       .order_by("received_at").values_list("pk", flat=True))
            if not ids:
                return
            for event_id in ids:
                billing.event_process(event_id=event_id, actor=ACTOR)

    def _backdate(self, anchor: datetime.datetime) -> None:
        """Move the demo's rows back to when the history says they happened (explicit UPDATEs, on purpose).

        The services stamp `received_at` / `created_at` with the time they run, so a month loaded in a few
        seconds would all look a minute old: no per-day chart, no ages in the queue or the approvals inbox.
        Only timestamps of demo rows move, to deterministic values (a rerun writes the same ones): an event
        arrives 20-120 s after it occurred (a late one two hours before the anchor); its receipt with it;
        what processing it created (canonical changes, exceptions, approvals, unposted journals) a second
        later. Posted journals are immutable and were posted at their time already (`_post_ready`); the
        audit log is append-only and is never touched: it keeps the real time of the load.
        """
        ids, times = [], []
        late_at = anchor - datetime.timedelta(hours=2)
        for event_id, occurred_at in Event.objects.filter(source_system=SOURCE, event_id__startswith="demo-") \
                .values_list("event_id", "occurred_at"):
            at = occurred_at + datetime.timedelta(seconds=_delay(event_id, 20, 120))
            if at < anchor - datetime.timedelta(days=DAYS + 1) or at > anchor:
                continue  # not this demo's history (an earlier demo's fixed dates): left as it is
            if event_id in self._late_ids:  # delivered after the close, though it occurred before
                at = late_at + datetime.timedelta(seconds=_delay(event_id, 20, 120))
            ids.append(event_id)
            times.append(at)
        # The months back-dated into get their partitions first (else their rows would sit in DEFAULT).
        audit.partitions_ensure(since=min(times, default=anchor).date(), actor="load_demo")
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute(
                "UPDATE billing_sync_event e SET received_at = v.at,"
                " processed_at = CASE WHEN e.processed_at IS NULL THEN NULL ELSE v.at + interval '1 second' END"
                " FROM unnest(%s::text[], %s::timestamptz[]) AS v(event_id, at)"
                " WHERE e.source_system = %s AND e.event_id = v.event_id", [ids, times, SOURCE])
            demo = ("FROM billing_sync_event e WHERE e.source_system = %s AND e.event_id = ANY(%s)")
            cur.execute("UPDATE billing_sync_receipt r SET received_at = e.received_at "
                        + demo + " AND e.receipt_id = r.id", [SOURCE, ids])
            cur.execute("UPDATE billing_sync_canonicalchange c SET at = e.received_at + interval '1 second' "
                        + demo + " AND c.event_id = e.id", [SOURCE, ids])
            cur.execute("UPDATE exceptions_queue_exceptionrecord x SET created_at = e.received_at + interval "
                        "'1 second', updated_at = GREATEST(e.received_at + interval '1 second', LEAST(x.updated_at,"
                        " e.received_at + interval '1 second')) " + demo + " AND x.event_id = e.id"
                        " AND x.created_at > e.received_at + interval '1 second'", [SOURCE, ids])
            cur.execute("UPDATE exceptions_queue_approval a SET created_at = e.received_at + interval '1 second' "
                        + demo + " AND a.event_id = e.id", [SOURCE, ids])
            # Unposted journals only: a trigger keeps posted ones immutable (they were posted at their time).
            cur.execute("UPDATE ledger_journal j SET created_at = e.received_at + interval '1 second' "
                        + demo + " AND j.event_id = e.id AND j.status <> 'posted'", [SOURCE, ids])

    def _post_ready(self) -> int:
        """Post every ready demo journal through the connector, oldest first (gapless JE numbers in order).

        A journal of the billing history is posted at its time (created + 15-240 s, `_ledger_clock`), so
        the dashboard's latency and posted-per-hour figures mean something; one that a controller just
        approved is posted now, after the decision.
        """
        posted = 0
        now = timezone.now()
        rows = (Journal.objects.filter(source_system=SOURCE, status=Journal.Status.READY)
                .order_by("created_at", "id").values_list("pk", "created_at", "approval__id"))
        for journal_id, created_at, approval_id in list(rows):
            moment = min(created_at + datetime.timedelta(seconds=_delay(str(journal_id), 15, 240)), now)
            if approval_id is not None:
                outcome = ledger.journal_post(journal_id=journal_id, actor=ACTOR)
            else:
                with _ledger_clock(moment):
                    outcome = ledger.journal_post(journal_id=journal_id, actor=ACTOR)
            posted += outcome.status == Journal.Status.POSTED
        return posted

    def _fail_one_posting(self, anchor) -> None:
        """The ERP refuses one journal (as the posting task reports after its retries): posting_failed."""
        journals = Journal.objects.filter(source_system=SOURCE, entity__code=ENTITY)
        if journals.filter(status=Journal.Status.FAILED, last_error__contains="ERP rejected").exists():
            return
        journal = (journals.filter(status=Journal.Status.READY, document_type="payment",
                                   accounting_date__gte=anchor.replace(day=1).date())
                   .order_by("-created_at").first()
                   or journals.filter(status=Journal.Status.READY).order_by("-created_at").first())
        if journal is None:
            return
        with _ledger_clock(journal.created_at + datetime.timedelta(minutes=25)):
            ledger.journal_post_failed(
                journal_id=journal.pk, actor=ACTOR,
                message="ERP rejected the journal: account 1200 is locked for the bank reconciliation (HTTP 423)")

    def _close_previous_month(self, entities, anchor) -> None:
        """The controller closes last month once its journals are posted (a rerun finds it closed)."""
        last_month = anchor.replace(day=1) - datetime.timedelta(days=1)
        controller = get_user_model().objects.get(username="controller")
        for entity in entities:
            ledger.period_set_status(entity=entity, year=last_month.year, month=last_month.month,
                                     status=Period.Status.CLOSED, actor=controller)

    def _decide(self, User) -> None:
        """Some decisions already made: one write-off approved, one rejected, the big credit note at 1 of 2."""
        plan = [("us01-wo-5002", "controller", "approve", "Agreed: bank charges, below the collection cost."),
                ("us01-wo-5003", "controller2", "reject", "Administrator's dividend not announced yet; wait."),
                ("us01-cn-4003", "controller", "approve", "Downgrade confirmed with the account manager.")]
        for document_id, username, decision, comment in plan:
            approval = Approval.objects.filter(event__source_system=SOURCE, document_id=document_id).first()
            user = User.objects.get(username=username)
            if approval is None or approval.status != Approval.Status.PENDING or \
                    ApprovalDecision.objects.filter(approval=approval, user=user).exists():
                continue
            decide = queue.approval_approve if decision == "approve" else queue.approval_reject
            decide(approval_id=approval.pk, user=user, comment=comment)

    _NOTES = {
        "awaiting_dependency": "Asked billing for the missing invoice; the customer paid a pro-forma.",
        "unknown_customer": "New customer created in CRM but not synced yet; billing is re-sending it.",
        "over_application": "Looks like a duplicate payment. Checking with the customer whether to refund.",
        "no_account_mapping": "Consulting needs its own revenue account (4100); asked the controller to add it.",
        "posting_failed": "ERP account locked during the bank reconciliation; retry after it is unlocked.",
        "period_closed": "Payment dated in the closed month. Controller to decide: reopen or book in this one.",
    }

    def _work_the_queue(self, ops, anchor) -> None:
        """`ops` owns most open demo exceptions and left a note on each; posting_failed is escalated."""
        open_ = ExceptionRecord.objects.filter(event__source_system=SOURCE).exclude(
            status=ExceptionRecord.Status.RESOLVED).order_by("created_at")
        for exc in open_:
            note = self._NOTES.get(exc.code)
            if note is None:
                continue  # left unassigned on purpose (the queue's "unassigned" filter has something)
            if exc.owner_id is None:
                queue.exception_assign(exception_id=exc.pk, owner=ops, actor=ops)
            if not exc.comments.exists():
                queue.exception_comment(exception_id=exc.pk, body=note, actor=ops)
            if exc.code == "posting_failed" and not exc.escalation_level:
                queue.exception_escalate(exception_id=exc.pk, reason="Blocks the daily posting run.", actor=ops)
        # The notes were written a couple of hours after each exception opened (never after the anchor);
        # comments are not audit entries, so their time moves like the other rows' (see `_backdate`).
        with connection.cursor() as cur:
            cur.execute("UPDATE exceptions_queue_exceptioncomment c SET created_at = LEAST(x.created_at + "
                        "interval '2 hours', %s) FROM exceptions_queue_exceptionrecord x JOIN billing_sync_event e"
                        " ON e.id = x.event_id WHERE c.exception_id = x.id AND e.source_system = %s"
                        " AND c.created_at > x.created_at + interval '2 hours'", [anchor, SOURCE])

    def _report(self, entities, counts, posted_now, token, shown_password) -> None:
        events = Event.objects.filter(source_system=SOURCE)
        by_status = {}
        for status in events.values_list("status", flat=True):
            by_status[status] = by_status.get(status, 0) + 1
        journals = Journal.objects.filter(source_system=SOURCE)
        pending_approvals = Approval.objects.filter(entity__in=entities, status=Approval.Status.PENDING).count()
        open_exceptions = ExceptionRecord.objects.filter(event__source_system=SOURCE).exclude(
            status=ExceptionRecord.Status.RESOLVED)
        codes = sorted(set(open_exceptions.values_list("code", flat=True)))
        closed = Period.objects.filter(entity__in=entities, status=Period.Status.CLOSED).order_by("year", "month")
        port = os.environ.get("PORT") or "8000"
        url = f"http://127.0.0.1:{port}/"
        w = self.stdout.write
        w("Demo data: entities " + ", ".join(f"{e.code} ({e.currency})" for e in entities)
          + f", source system {SOURCE!r}")
        w(f"  events: {events.count()} ({counts['new']} new, {counts['replayed']} already loaded"
          f"{', %d refused' % counts['refused'] if counts['refused'] else ''}); by status: "
          + ", ".join(f"{k} {v}" for k, v in sorted(by_status.items())))
        w(f"  journals: {journals.filter(status=Journal.Status.POSTED).count()} posted ({posted_now} just now), "
          f"{journals.filter(status=Journal.Status.PENDING_APPROVAL).count()} awaiting approval; "
          f"approvals pending: {pending_approvals}; open exceptions: {open_exceptions.count()} ({', '.join(codes)})")
        if closed:
            w("  closed periods: " + ", ".join(sorted({f"{p.year}-{p.month:02d}" for p in closed})))
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
