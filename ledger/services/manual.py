"""Manual journals: check a journal a person writes by hand (balanced, open period, active accounts, each
problem with its field) and book it, idempotently per request key.
"""
import datetime
import uuid
from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction

from config import roles
from config.errors import Codes, TieoutError
from ledger.models import Account, Entity, Journal
from config.money import ZERO, parse_money_input, quantize
from ledger.services.journals import JournalSpec, LineSpec, journal_create
from ledger.services.periods import period_is_closed

MANUAL_JOURNAL_MAX_LINES = 200


def _manual_money(value, currency: str, field: str, errors: list[dict]) -> Decimal:
    """A line's debit or credit: blank is 0; otherwise the API's money rules (no floats, no exponents)."""
    try:
        amount = parse_money_input(value, currency)
    except ValueError as exc:
        errors.append({"field": field, "message": f"Money {exc}."})
        return ZERO
    if amount is None:
        return ZERO
    if amount < ZERO:
        errors.append({"field": field, "message": "Must not be negative."})
        return ZERO
    return amount


@dataclass(frozen=True)
class ManualJournalDraft:
    """A manual journal that passed every check: lines `(account_code, debit, credit, memo)`, balanced."""

    entity: Entity
    accounting_date: datetime.date
    description: str
    lines: tuple
    total: Decimal


def manual_journal_check(*, entity: Entity, accounting_date: datetime.date, lines, description: str,
                         user) -> ManualJournalDraft:
    """Check a journal a person writes by hand: balanced, into an open period, on active accounts of `entity`.

    `lines` are `(account_code, debit, credit, memo)`; each line has exactly one side. Every problem is
    refused up front with its field named (code `invalid_request`, `unknown_account`,
    `unbalanced_journal` or `period_closed`); the database's balance trigger stands behind the check.
    Whether it then needs approval is the approval policy's business (`exceptions_queue`).
    """
    if not roles.has_role(user, *roles.WORKERS):
        raise TieoutError("only finance operations, controllers and admins write manual journals",
                          code=Codes.PERMISSION_DENIED, status=403)
    if not roles.may_see_entity(user, entity.code):
        raise TieoutError(f"no entity {entity.code}", code=Codes.NOT_FOUND, status=404)
    currency = entity.currency
    errors: list[dict] = []
    description = (description or "").strip()
    if not description:
        errors.append({"field": "description", "message": "Say what the journal is for: the approver reads it."})
    elif len(description) > 300:
        errors.append({"field": "description", "message": "Must be at most 300 characters."})
    if not isinstance(accounting_date, datetime.date):
        errors.append({"field": "accounting_date", "message": "Must be a date in YYYY-MM-DD form."})
    parsed = []
    for index, line in enumerate(lines or []):
        account_code, debit, credit, memo = (tuple(line) + ("", "", "", ""))[:4]
        account_code = (account_code or "").strip()
        debit = _manual_money(debit, currency, f"lines[{index}].debit", errors)
        credit = _manual_money(credit, currency, f"lines[{index}].credit", errors)
        if not account_code and debit == ZERO and credit == ZERO:
            continue  # an empty row of the form
        if not account_code:
            errors.append({"field": f"lines[{index}].account", "message": "Choose an account."})
        if (debit > ZERO) == (credit > ZERO):
            errors.append({"field": f"lines[{index}].debit",
                           "message": "Enter a debit or a credit (one side per line, more than 0)."})
        parsed.append((index, account_code, debit, credit, (memo or "").strip()[:300]))
    if len(parsed) < 2:
        errors.append({"field": "lines", "message": "A journal needs at least two lines."})
    if len(parsed) > MANUAL_JOURNAL_MAX_LINES:
        errors.append({"field": "lines", "message": f"At most {MANUAL_JOURNAL_MAX_LINES} lines."})
    if errors:
        raise TieoutError("the journal has errors", code=Codes.INVALID_REQUEST, status=422, errors=errors,
                          title="The journal was refused")
    accounts = {a.code: a for a in Account.objects.filter(entity=entity, code__in={p[1] for p in parsed})}
    for index, code, *_ in parsed:
        account = accounts.get(code)
        if account is None:
            errors.append({"field": f"lines[{index}].account", "message": f"{entity.code} has no account {code}."})
        elif not account.is_active:
            errors.append({"field": f"lines[{index}].account", "message": f"Account {code} is not active."})
    if errors:
        raise TieoutError("; ".join(e["message"] for e in errors), code=Codes.UNKNOWN_ACCOUNT, status=422,
                          errors=errors, title="The journal was refused")
    total_debit = sum((p[2] for p in parsed), ZERO)
    total_credit = sum((p[3] for p in parsed), ZERO)
    if total_debit != total_credit:
        message = (f"Debits ({total_debit}) and credits ({total_credit}) differ by "
                   f"{abs(total_debit - total_credit)}; a journal must balance.")
        raise TieoutError(message, code=Codes.UNBALANCED_JOURNAL, status=422, title="The journal does not balance",
                          errors=[{"field": "lines", "message": message}])
    if period_is_closed(entity, accounting_date):
        message = f"Period {accounting_date:%Y-%m} of {entity.code} is closed; choose a date in an open period."
        raise TieoutError(message, code=Codes.PERIOD_CLOSED, status=422, title="The period is closed",
                          errors=[{"field": "accounting_date", "message": message}])
    return ManualJournalDraft(entity=entity, accounting_date=accounting_date, description=description,
                              lines=tuple((code, d, c, memo) for _, code, d, c, memo in parsed), total=total_debit)


@transaction.atomic
def manual_journal_book(*, draft: ManualJournalDraft, user, needs_approval: bool,
                        request_key: str | None = None) -> tuple[Journal, bool]:
    """Book a checked manual journal; returns `(journal, created)`.

    Waiting for approval when `needs_approval` (approve releases it, reject refuses it for good), else
    ready to post at once. With a `request_key` (a form's hidden token, an API Idempotency-Key), the same
    key from the same person returns the journal it first created (`created` False).
    """
    entity, accounting_date, currency = draft.entity, draft.accounting_date, draft.entity.currency
    if request_key:
        identity = uuid.uuid5(uuid.UUID("5d0c1c3e-7f43-4d8e-9b4e-2f0d3c9a61a7"), f"{user.pk}:{request_key}")
        document_id = f"MJ-{identity.hex[:12].upper()}"
        # Two submits of one form at once: the second waits here for the first, then finds its journal.
        with transaction.get_connection().cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"manual_journal:{document_id}"])
        existing = Journal.objects.filter(entity=entity, kind="manual", document_id=document_id).first()
        if existing is not None:
            same = (existing.accounting_date == accounting_date and sorted(
                (ln.account.code, ln.debit, ln.credit) for ln in existing.lines.select_related("account")) == sorted(
                (code, quantize(d, currency), quantize(c, currency)) for code, d, c, _ in draft.lines))
            if not same:
                raise TieoutError("this request (form or Idempotency-Key) was already used for a different journal; "
                                  "start a new one to write another", code=Codes.IDEMPOTENCY_CONFLICT, status=409)
            return existing, False
    else:
        document_id = f"MJ-{uuid.uuid4().hex[:12].upper()}"
    journal = journal_create(JournalSpec(
        entity=entity, accounting_date=accounting_date, kind="manual",
        lines=[LineSpec(debit=d, credit=c, account_code=code, memo=memo) for code, d, c, memo in draft.lines],
        document_type="manual_journal", document_id=document_id, description=draft.description,
        needs_approval=needs_approval), actor=user)
    return journal, True
