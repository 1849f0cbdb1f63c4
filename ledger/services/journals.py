"""Journals: create a balanced journal (posting-rule roles resolved to the entity's mapped accounts), reverse
one, release or reject one waiting for approval, send a failed one again.
"""
import datetime
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import transaction

from audit import services as audit
from config import correlation, deferred
from config.errors import BusinessRuleError, Codes, TieoutError
from config.memo import memoized
from ledger.models import Account, AccountMapping, Entity, Journal, JournalLine
from config.money import ZERO, quantize
from ledger.services.outbox import _enqueue
from ledger.services.periods import period_require_open


@dataclass
class LineSpec:
    debit: Decimal = ZERO
    credit: Decimal = ZERO
    role: str | None = None
    account_code: str | None = None  # an explicit account (an invoice line's revenue_account)
    customer_id: str = ""
    invoice_id: str = ""
    payment_id: str = ""
    jurisdiction: str = ""
    memo: str = ""


@dataclass
class JournalSpec:
    entity: Entity
    accounting_date: datetime.date
    kind: str
    lines: list[LineSpec]
    event_id: object = None
    source_system: str = ""
    document_type: str = ""
    document_id: str = ""
    document_version: int | None = None
    description: str = ""
    needs_approval: bool = False
    reverses: Journal | None = None
    extra: dict = field(default_factory=dict)


def _resolve_accounts(entity: Entity, lines: list[LineSpec]) -> dict[str, Account]:
    wanted = frozenset(line.role for line in lines if line.role)
    codes = frozenset(line.account_code for line in lines if line.account_code)
    return memoized(("accounts", entity.pk, wanted, codes), lambda: _accounts_read(entity, wanted, codes))


def _accounts_read(entity: Entity, wanted: frozenset, codes: frozenset) -> dict[str, Account]:
    mapped = {m.role: m.account for m in AccountMapping.objects.select_related("account")
              .filter(entity=entity, role__in=wanted)}
    missing = wanted - set(mapped)
    if missing:
        raise BusinessRuleError(Codes.NO_ACCOUNT_MAPPING,
                                f"{entity.code} has no account mapped for {', '.join(sorted(missing))}")
    by_code = {a.code: a for a in Account.objects.filter(entity=entity, code__in=codes, is_active=True)}
    unknown = codes - set(by_code)
    if unknown:
        raise BusinessRuleError(Codes.NO_ACCOUNT_MAPPING,
                                f"{entity.code} has no active account {', '.join(sorted(unknown))}")
    resolved = {f"role:{k}": v for k, v in mapped.items()}
    resolved.update({f"code:{k}": v for k, v in by_code.items()})
    return resolved


def journal_check(spec: JournalSpec) -> None:
    """`journal_create`'s business rules (an open period, a mapped account for every line), for a handler that
    checks everything before it writes anything (billing_sync.documents). Read once per chunk (config.memo)."""
    _checked(spec)


def _checked(spec: JournalSpec) -> tuple[list, dict[str, Account]]:
    """The spec's lines with amounts (quantized; zero lines dropped) and their accounts, or the error."""
    entity = spec.entity
    period_require_open(entity, spec.accounting_date)
    currency = entity.currency
    lines = []
    for line in spec.lines:
        debit, credit = quantize(line.debit, currency), quantize(line.credit, currency)
        if debit == ZERO and credit == ZERO:
            continue  # a zero fee or zero tax produces no line
        if debit < ZERO or credit < ZERO:
            raise TieoutError(f"journal for {spec.kind} has a negative amount", code=Codes.INVALID_STATE, status=500)
        lines.append((line, debit, credit))
    total_debit = sum((d for _, d, _ in lines), ZERO)
    total_credit = sum((c for _, _, c in lines), ZERO)
    if total_debit != total_credit or not lines:
        # The database would refuse it at commit too; this is the readable message.
        raise TieoutError(f"journal for {spec.kind} does not balance ({total_debit} / {total_credit})",
                          code=Codes.INVALID_STATE, status=500)
    return lines, _resolve_accounts(entity, [line for line, _, _ in lines])


def journal_create(spec: JournalSpec, *, actor) -> Journal:
    """Write a balanced journal (and its outbox row when it can post at once). Caller holds the transaction."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("journal_create runs inside the caller's transaction")
    entity = spec.entity
    lines, accounts = _checked(spec)
    status = Journal.Status.PENDING_APPROVAL if spec.needs_approval else Journal.Status.READY
    cid = correlation.get() or ""
    journal = Journal(
        entity=entity, status=status, accounting_date=spec.accounting_date, event_id=spec.event_id,
        reverses=spec.reverses, kind=spec.kind, source_system=spec.source_system,
        document_type=spec.document_type, document_id=spec.document_id, document_version=spec.document_version,
        description=spec.description[:300], correlation_id=cid, created_by=audit.actor_label(actor))
    # The journal and its lines: two statements, or in a chunk written behind with its others (config/deferred.py:
    # before any later statement that reads their tables). Its balance is checked by the database at commit.
    deferred.insert_all([journal] + [
        JournalLine(journal=journal, line_no=index, account=accounts[f"role:{line.role}" if line.role
                                                                      else f"code:{line.account_code}"],
                    debit=debit, credit=credit, customer_id=line.customer_id, invoice_id=line.invoice_id,
                    payment_id=line.payment_id, jurisdiction=line.jurisdiction, memo=line.memo[:300])
        for index, (line, debit, credit) in enumerate(lines, start=1)
    ], readable=True)
    audit.record(actor=actor, action="journal.created", object_type="journal", object_id=journal.pk,
                 event_id=spec.event_id,
                 after={"status": status, "kind": spec.kind, "accounting_date": spec.accounting_date,
                        "reverses": spec.reverses.pk if spec.reverses else None,
                        "lines": [{"account": accounts[f"role:{ln.role}" if ln.role else f"code:{ln.account_code}"].code,
                                   "debit": d, "credit": c, "customer_id": ln.customer_id,
                                   "invoice_id": ln.invoice_id, "jurisdiction": ln.jurisdiction}
                                  for ln, d, c in lines]})
    if status == Journal.Status.READY:
        _enqueue(journal)
    return journal


def journal_reversal(*, original: Journal, accounting_date: datetime.date, kind: str, event_id, actor,
                     description: str = "") -> Journal:
    """A new journal with every line of `original` on the other side; `original` itself never changes."""
    lines = [LineSpec(debit=line.credit, credit=line.debit, account_code=line.account.code,
                      customer_id=line.customer_id, invoice_id=line.invoice_id, payment_id=line.payment_id,
                      jurisdiction=line.jurisdiction, memo=f"reversal of line {line.line_no}")
             for line in original.lines.select_related("account").order_by("line_no")]
    return journal_create(JournalSpec(
        entity=original.entity, accounting_date=accounting_date, kind=kind, lines=lines, event_id=event_id,
        source_system=original.source_system, document_type=original.document_type,
        document_id=original.document_id, document_version=original.document_version,
        description=description or f"Reversal of {original.pk}", reverses=original), actor=actor)


@transaction.atomic
def journal_release(*, journal_id, actor) -> Journal:
    """An approved journal becomes ready to post (its period must still be open)."""
    journal = Journal.objects.select_for_update(of=("self",)).select_related("entity").get(pk=journal_id)
    if journal.status != Journal.Status.PENDING_APPROVAL:
        raise TieoutError(f"journal {journal.pk} is {journal.status}, not pending approval", code=Codes.INVALID_STATE,
                          status=409)
    period_require_open(journal.entity, journal.accounting_date)
    journal.status = Journal.Status.READY
    journal.save(update_fields=["status"])
    audit.record(actor=actor, action="journal.released", object_type="journal", object_id=journal.pk,
                 event_id=journal.event_id, before={"status": "pending_approval"}, after={"status": "ready"})
    _enqueue(journal)
    return journal


@transaction.atomic
def journal_reject(*, journal_id, actor) -> Journal:
    journal = Journal.objects.select_for_update().get(pk=journal_id)
    if journal.status != Journal.Status.PENDING_APPROVAL:
        raise TieoutError(f"journal {journal.pk} is {journal.status}, not pending approval", code=Codes.INVALID_STATE,
                          status=409)
    journal.status = Journal.Status.REJECTED
    journal.save(update_fields=["status"])
    audit.record(actor=actor, action="journal.rejected", object_type="journal", object_id=journal.pk,
                 event_id=journal.event_id, before={"status": "pending_approval"}, after={"status": "rejected"})
    return journal


@transaction.atomic
def journal_retry(*, journal_id, actor) -> Journal:
    """Send a failed journal to the ERP again (from its exception's retry)."""
    journal = Journal.objects.select_for_update().get(pk=journal_id)
    if journal.status != Journal.Status.FAILED:
        return journal
    journal.status = Journal.Status.READY
    journal.deliveries_lost = 0  # a person asked again: a fresh budget of deliveries and of retries
    journal.posting_retries = 0
    journal.next_attempt_at = None
    journal.erp_batch = None  # a failed batch is not sent again: the journal joins a new one
    journal.save(update_fields=["status", "deliveries_lost", "posting_retries", "next_attempt_at", "erp_batch"])
    audit.record(actor=actor, action="journal.retry", object_type="journal", object_id=journal.pk,
                 event_id=journal.event_id, before={"status": "failed"}, after={"status": "ready"})
    _enqueue(journal)
    return journal
