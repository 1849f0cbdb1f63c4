"""The posting rules of POSTING_RULES.md: from a billing document to the lines of its journal. Each
function returns a `JournalSpec` whose lines name posting-rule roles (receivable, revenue, ...);
`ledger.services.journal_create` resolves roles to the entity's mapped accounts, so remapping an account is
data, not code. Amounts arrive as Decimal in the entity's currency."""
import datetime
from decimal import Decimal

from ledger.models import AccountMapping, Entity
from config.money import ZERO
from ledger.services import JournalSpec, LineSpec

R = AccountMapping.Role


def invoice_issued(*, entity: Entity, source_system: str, invoice_id: str, customer_id: str, version: int,
                   issue_date: datetime.date, total: Decimal, lines: list[dict], event_id, number: str) -> JournalSpec:
    """Dr receivable `total`; Cr each line's revenue account; Cr tax payable each tax (by jurisdiction)."""
    out = [LineSpec(debit=total, role=R.RECEIVABLE, customer_id=customer_id, invoice_id=invoice_id,
                    memo=f"Invoice {number}")]
    for line in lines:
        account = line.get("revenue_account") or None
        out.append(LineSpec(credit=line["amount"], role=None if account else R.REVENUE, account_code=account,
                            customer_id=customer_id, invoice_id=invoice_id, memo=line.get("description", "")))
        for tax in line.get("taxes", []):
            out.append(LineSpec(credit=tax["amount"], role=R.TAX_PAYABLE, jurisdiction=tax["jurisdiction"],
                                customer_id=customer_id, invoice_id=invoice_id))
    return JournalSpec(entity=entity, accounting_date=issue_date, kind="invoice", lines=out, event_id=event_id,
                       source_system=source_system, document_type="invoice", document_id=invoice_id,
                       document_version=version, description=f"Invoice {number} v{version}")


def payment_received(*, entity: Entity, source_system: str, payment_id: str, customer_id: str, amount: Decimal,
                     fee: Decimal, received_on: datetime.date, allocations: list[tuple[str, Decimal]],
                     event_id) -> JournalSpec:
    """Dr clearing `amount − fee`; Dr fees `fee`; Cr receivable per allocation; Cr unapplied cash the rest."""
    allocated = sum((a for _, a in allocations), ZERO)
    out = [LineSpec(debit=amount - fee, role=R.CLEARING, customer_id=customer_id, payment_id=payment_id),
           LineSpec(debit=fee, role=R.FEES, customer_id=customer_id, payment_id=payment_id)]
    out += [LineSpec(credit=a, role=R.RECEIVABLE, customer_id=customer_id, invoice_id=inv, payment_id=payment_id)
            for inv, a in allocations]
    out.append(LineSpec(credit=amount - allocated, role=R.UNAPPLIED_CASH, customer_id=customer_id,
                        payment_id=payment_id))
    return JournalSpec(entity=entity, accounting_date=received_on, kind="payment", lines=out, event_id=event_id,
                       source_system=source_system, document_type="payment", document_id=payment_id,
                       description=f"Payment {payment_id}")


def payment_applied(*, entity: Entity, source_system: str, payment_id: str, customer_id: str, on: datetime.date,
                    allocations: list[tuple[str, Decimal]], event_id) -> JournalSpec:
    """Dr unapplied cash, Cr receivable, for each allocation."""
    out = []
    for inv, a in allocations:
        out.append(LineSpec(debit=a, role=R.UNAPPLIED_CASH, customer_id=customer_id, payment_id=payment_id))
        out.append(LineSpec(credit=a, role=R.RECEIVABLE, customer_id=customer_id, invoice_id=inv,
                            payment_id=payment_id))
    return JournalSpec(entity=entity, accounting_date=on, kind="payment_application", lines=out, event_id=event_id,
                       source_system=source_system, document_type="payment", document_id=payment_id,
                       description=f"Application of payment {payment_id}")


def payment_refunded(*, entity: Entity, source_system: str, refund_id: str, payment_id: str, customer_id: str,
                     amount: Decimal, invoice_id: str | None, on: datetime.date, event_id) -> JournalSpec:
    """With an invoice: Dr receivable, Cr clearing. Without: Dr unapplied cash, Cr clearing."""
    first = (LineSpec(debit=amount, role=R.RECEIVABLE, customer_id=customer_id, invoice_id=invoice_id,
                      payment_id=payment_id) if invoice_id else
             LineSpec(debit=amount, role=R.UNAPPLIED_CASH, customer_id=customer_id, payment_id=payment_id))
    out = [first, LineSpec(credit=amount, role=R.CLEARING, customer_id=customer_id, payment_id=payment_id)]
    return JournalSpec(entity=entity, accounting_date=on, kind="refund", lines=out, event_id=event_id,
                       source_system=source_system, document_type="refund", document_id=refund_id,
                       description=f"Refund {refund_id} of payment {payment_id}")


def credit_note(*, entity: Entity, source_system: str, credit_note_id: str, invoice_id: str, customer_id: str,
                amount: Decimal, taxes: list[dict], on: datetime.date, event_id, needs_approval: bool) -> JournalSpec:
    """Dr returns `amount`; Dr tax payable each tax; Cr receivable `amount + taxes`."""
    tax_total = sum((t["amount"] for t in taxes), ZERO)
    out = [LineSpec(debit=amount, role=R.RETURNS, customer_id=customer_id, invoice_id=invoice_id)]
    out += [LineSpec(debit=t["amount"], role=R.TAX_PAYABLE, jurisdiction=t["jurisdiction"], customer_id=customer_id,
                     invoice_id=invoice_id) for t in taxes]
    out.append(LineSpec(credit=amount + tax_total, role=R.RECEIVABLE, customer_id=customer_id, invoice_id=invoice_id))
    return JournalSpec(entity=entity, accounting_date=on, kind="credit_note", lines=out, event_id=event_id,
                       source_system=source_system, document_type="credit_note", document_id=credit_note_id,
                       description=f"Credit note {credit_note_id} on {invoice_id}", needs_approval=needs_approval)


def write_off(*, entity: Entity, source_system: str, write_off_id: str, invoice_id: str, customer_id: str,
              amount: Decimal, on: datetime.date, event_id, needs_approval: bool) -> JournalSpec:
    """Dr bad debt, Cr receivable."""
    out = [LineSpec(debit=amount, role=R.BAD_DEBT, customer_id=customer_id, invoice_id=invoice_id),
           LineSpec(credit=amount, role=R.RECEIVABLE, customer_id=customer_id, invoice_id=invoice_id)]
    return JournalSpec(entity=entity, accounting_date=on, kind="write_off", lines=out, event_id=event_id,
                       source_system=source_system, document_type="write_off", document_id=write_off_id,
                       description=f"Write-off {write_off_id} of {invoice_id}", needs_approval=needs_approval)
