"""Manual journals under the approval policy: the ledger checks and books the journal, this module decides
whether it waits for approval.
"""
from django.db import transaction

from exceptions_queue.models import Approval
from exceptions_queue.services.approvals import approval_request, approvals_required
from ledger import services as ledger
from ledger.models import Journal


@transaction.atomic
def manual_journal_create(*, entity, accounting_date, lines, description: str, user, reason: str | None = None,
                          request_key: str | None = None) -> Journal:
    """A journal a person writes by hand, under the entity's approval policy.

    The ledger checks it (`manual_journal_check`: balanced, open period, active accounts, each problem
    with its field named) and books it; with the policy's `manual_journal_threshold` (default 0: every
    one) reached, it waits for approval by someone other than `user`, with `reason` (default: the
    description) for the approver. The same `request_key` from the same person returns the journal it
    first created, without a second approval request.
    """
    draft = ledger.manual_journal_check(entity=entity, accounting_date=accounting_date, lines=lines,
                                        description=description, user=user)
    required = approvals_required(entity=entity, kind=Approval.Kind.MANUAL_JOURNAL, amount=draft.total)
    journal, created = ledger.manual_journal_book(draft=draft, user=user, needs_approval=bool(required),
                                                  request_key=request_key)
    if created and required:
        approval_request(entity=entity, event=None, journal=journal, kind=Approval.Kind.MANUAL_JOURNAL,
                         document_id=journal.document_id, amount=draft.total, currency=entity.currency,
                         requested_by=user, required=required, actor=user,
                         reason=reason if reason is not None else draft.description)
    return journal
