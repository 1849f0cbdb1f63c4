"""Billing histories for the ordering tests, and what a run of one comes to.

Used by tests/billing_sync/test_ordering.py (worker vs one at a time) and tests/test_production_layout.py
(gunicorn, a two-process worker and beat vs one at a time): a history is built under an id prefix, sent,
and its outcome read back with the prefix taken out, so that two runs of one history compare equal.
"""
from decimal import Decimal

from hypothesis import strategies as st

from billing_sync import ordering
from billing_sync.models import CreditNote, Event, Invoice, Payment, Refund
from config.celery import app as celery_app
from exceptions_queue.models import ExceptionRecord
from ledger.models import Journal
from tests import factories as f
from tests.helpers import wait_until


class eager:
    """One event at a time: each event processed (and posted) in its own request, as the test settings do."""

    def __init__(self, settings):
        self.settings = settings

    def __enter__(self):
        self.previous = celery_app.conf.task_always_eager
        celery_app.conf.task_always_eager = True
        self.settings.CELERY_TASK_ALWAYS_EAGER = True

    def __exit__(self, *exc):
        celery_app.conf.task_always_eager = self.previous
        self.settings.CELERY_TASK_ALWAYS_EAGER = self.previous


def settled(prefix: str, count: int) -> bool:
    """Every event of the run arrived and is at rest (processed, or held behind a parked one), nothing unposted."""
    events = Event.objects.filter(event_id__startswith=prefix)
    if events.count() < count:
        return False
    if any(ordering.held_by(e) is None for e in events.filter(status="accepted")):
        return False
    return not Journal.objects.filter(event__in=events, status__in=["ready", "posting"]).exists()


def wait_settled(prefix: str, count: int, worker, timeout: float) -> None:
    """Wait until the run is `settled` and stays so for a few polls (nothing was in flight); the worker's log
    tail if it does not."""
    streak = 0

    def at_rest() -> bool:
        nonlocal streak
        streak = streak + 1 if settled(prefix, count) else 0
        return streak >= 3

    wait_until(at_rest, timeout=timeout, interval=0.2,
               message=lambda: f"run {prefix} did not settle\n--- worker log ---\n{worker.log_tail()}")


def outcome(prefix: str) -> dict:
    """The run's result with its id prefix taken out: per event (by its place in the history) the status,
    exceptions and journals, and the documents' running totals."""
    def plain(value):
        return str(value).replace(prefix, "") if value is not None else None

    result = {}
    for event in Event.objects.filter(event_id__startswith=prefix).order_by("seq"):
        journals = sorted(
            (j.kind, j.status, tuple(sorted(
                (line.account.code, str(line.debit), str(line.credit), plain(line.invoice_id))
                for line in j.lines.select_related("account"))))
            for j in Journal.objects.filter(event=event))
        exceptions = sorted((x.code, x.status, plain(x.dependency_key))
                            for x in ExceptionRecord.objects.filter(event=event))
        result[plain(event.event_id)] = {"type": event.type, "status": event.status, "journals": journals,
                                         "exceptions": exceptions}
    result["invoices"] = {plain(i.invoice_id): (i.status, i.version, str(i.total), str(i.applied_total),
                                                 str(i.credited_total), str(i.written_off_total), str(i.refunded_total))
                          for i in Invoice.objects.filter(invoice_id__startswith=prefix)}
    result["payments"] = {plain(p.payment_id): (str(p.amount), str(p.allocated_total), str(p.refunded_total))
                          for p in Payment.objects.filter(payment_id__startswith=prefix)}
    result["credit_notes"] = sorted(plain(c.credit_note_id) for c in CreditNote.objects.filter(
        credit_note_id__startswith=prefix))
    result["refunds"] = sorted(plain(r.refund_id) for r in Refund.objects.filter(refund_id__startswith=prefix))
    return result


# Random histories: a couple of customers, invoices that may come after their payments, credit notes,
# refunds, voids, applications of unapplied cash and write-offs, each customer's events in order and the
# customers interleaved.
POOL = 3
cents = st.integers(min_value=1, max_value=40_000)
OP = st.one_of(
    st.tuples(st.just("invoice"), st.integers(0, POOL - 1), cents),
    st.tuples(st.just("invoice"), st.integers(0, POOL - 1), cents),
    st.tuples(st.just("payment"), st.integers(0, POOL - 1), cents, st.integers(0, 40_000)),
    st.tuples(st.just("payment"), st.integers(0, POOL - 1), cents, st.integers(0, 40_000)),
    st.tuples(st.just("credit"), st.integers(0, POOL - 1), st.integers(1, 20_000)),
    st.tuples(st.just("refund"), st.integers(0, 3), st.integers(1, 20_000), st.booleans()),
    st.tuples(st.just("apply"), st.integers(0, 3), st.integers(0, POOL - 1), st.integers(1, 20_000)),
    st.tuples(st.just("void"), st.integers(0, POOL - 1)),
    st.tuples(st.just("write_off"), st.integers(0, POOL - 1), st.integers(1, 20_000)),
)
CUSTOMER_HISTORY = st.tuples(st.booleans(), st.lists(OP, min_size=1, max_size=8))  # (customer first?, ops)


def _money(value: int) -> str:
    return str((Decimal(value) / 100).quantize(Decimal("0.01")))


def customer_events(p: str, c: int, customer_first: bool, ops) -> list[dict]:
    cus = f"{p}c{c}"
    invoices = [f"{cus}_inv{i}" for i in range(POOL)]
    versions: dict[str, int] = {}
    payments: list[str] = []
    out: list[dict] = []

    def add(payload):
        payload["event_id"] = f"{cus}_e{len(out):02d}"
        out.append(payload)

    for op in ops:
        kind = op[0]
        if kind == "invoice":
            invoice_id = invoices[op[1]]
            versions[invoice_id] = versions.get(invoice_id, 0) + 1
            add(f.invoice(invoice_id, customer_id=cus, lines=[(_money(op[2]), "0")], version=versions[invoice_id],
                          type_="invoice.issued" if versions[invoice_id] == 1 else "invoice.amended"))
        elif kind == "payment":
            payment_id = f"{cus}_pay{len(payments)}"
            payments.append(payment_id)
            allocated = min(op[2], op[3])
            add(f.payment(payment_id, customer_id=cus, amount=_money(op[2]),
                          allocations=[(invoices[op[1]], _money(allocated))] if allocated else []))
        elif kind == "credit":
            add(f.credit_note(invoices[op[1]], _money(op[2]), credit_note_id=f"{cus}_cn{len(out)}"))
        elif kind == "refund" and payments:
            payment_id = payments[op[1] % len(payments)]
            add(f.refund(payment_id, _money(op[2]), refund_id=f"{cus}_re{len(out)}",
                         invoice_id=invoices[0] if op[3] else None))
        elif kind == "apply" and payments:
            add(f.payment_applied(payments[op[1] % len(payments)], [(invoices[op[2]], _money(op[3]))]))
        elif kind == "void":
            add(f.invoice_voided(invoices[op[1]]))
        elif kind == "write_off":
            add(f.write_off(invoices[op[1]], _money(op[2]), write_off_id=f"{cus}_wo{len(out)}"))
    customer = f.customer(cus)
    if customer_first:
        out.insert(0, customer)
    else:
        out.insert(min(2, len(out)), customer)  # after an event or two that need it: they wait for it
    customer["event_id"] = f"{cus}_cust"
    return out


def interleave(histories: list[list[dict]], picks: list[int]) -> list[dict]:
    """Merge the customers' histories, each kept in order, in the drawn interleaving."""
    queues = [list(h) for h in histories]
    merged = []
    for pick in picks:
        live = [q for q in queues if q]
        if not live:
            break
        merged.append(live[pick % len(live)].pop(0))
    for q in queues:
        merged.extend(q)
    return merged


