"""Approval reads for the portal: `inbox(...)` filters approvals (status, kind, entity, the month its document
is dated in; scoped to the user's entities) with the queue's FilterSet and counts decisions in the same query;
`approval_context(...)` gathers all a controller reads before deciding (request, policy and why it needs one or
two approvers, journal lines, the invoice with open amounts in billing and ledger, its history and related
documents, the customer's balance, or for a period close or reopen the month's live close checks; decisions so
far, and what the user may do, segregation of duties spelled out). Money is formatted
here in the currency's minor units, so templates only display."""
import datetime

from django.db.models import Count, DecimalField, ExpressionWrapper, F, Q, Sum
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils import timezone

from billing_sync.models import CreditNote, Invoice, WriteOff
from config import roles
from exceptions_queue.models import Approval, ApprovalDecision, ApprovalPolicy
from exceptions_queue.selectors import ApprovalFilter
from config.money import ZERO, fmt
from ledger.selectors import receivable_balance
from portal.selectors import close as close_selectors

KIND_LABELS = {"credit_note": "Credit note", "write_off": "Write-off", "manual_journal": "Manual journal",
               "period_close": "Period close with failing checks", "period_reopen": "Period reopen"}
PERIOD_KINDS = ("period_close", "period_reopen")
STATUS_CHOICES = [("pending", "Pending"), ("approved", "Approved"), ("rejected", "Rejected"), ("all", "All")]
MINE_CHOICES = [("", "Everyone's"), ("decide", "Waiting for my decision"), ("raised", "Raised by me")]
# How old a pending request may get before the inbox flags it (hours): fresh, waiting, overdue.
AGE_WARN_HOURS = 24
AGE_BAD_HOURS = 72
INVOICE_FIELDS = {
    "number": "Number", "status": "Status", "version": "Version", "issue_date": "Issue date", "due_date": "Due date",
    "subtotal": "Subtotal", "tax_total": "Tax", "total": "Total", "applied_total": "Payments applied",
    "credited_total": "Credited", "written_off_total": "Written off", "refunded_total": "Refunded",
    "customer": "Customer",
}
MONEY_FIELDS = {"subtotal", "tax_total", "total", "applied_total", "credited_total", "written_off_total",
                "refunded_total"}


def may_decide(user) -> bool:
    return roles.has_role(user, roles.CONTROLLER, roles.ADMIN)


def inbox(user, params) -> tuple:
    """Approvals the user may see, filtered by `params` (status defaults to pending; `all` for every status).

    Returns (queryset, cleaned filters). Each row carries `given`: the approvals recorded so far.
    """
    status = (params.get("status") or "pending").strip()
    data = {"status": "" if status == "all" else status, "kind": (params.get("kind") or "").strip(),
            "entity": (params.get("entity") or "").strip()}
    period = close_selectors.parse_month((params.get("period") or "").strip())
    qs = (Approval.objects.select_related("entity", "requested_by")
          .annotate(given=Count("decisions", filter=Q(decisions__decision=ApprovalDecision.Decision.APPROVE)))
          .order_by("created_at", "id"))  # oldest first: the longest waiting is decided first
    qs = roles.scope(qs, user, "entity__code")
    filtered = ApprovalFilter(data={k: v for k, v in data.items() if v}, queryset=qs).qs
    if period is not None:  # the documents dated in a month (the close check's link)
        first, last = close_selectors.month_bounds(*period)
        filtered = filtered.filter(journal__accounting_date__gte=first, journal__accounting_date__lte=last)
    mine = (params.get("mine") or "").strip()
    if mine == "decide":  # what this user may still decide: not their own, not decided by them yet
        filtered = filtered.filter(status=Approval.Status.PENDING).exclude(requested_by=user).exclude(
            decisions__user=user)
    elif mine == "raised":
        filtered = filtered.filter(requested_by=user)
    else:
        mine = ""
    return filtered, {**data, "status": status, "mine": mine,
                      "period": f"{period[0]}-{period[1]:02d}" if period is not None else ""}


def _age(approval, now) -> tuple[str, str]:
    """A short age ('3 h', '2 d') and its badge class; decided requests are never flagged."""
    end = approval.decided_at or now
    hours = (end - approval.created_at).total_seconds() / 3600
    text = f"{int(hours * 60)} min" if hours < 1 else f"{int(hours)} h" if hours < 48 else f"{int(hours // 24)} d"
    if approval.status != Approval.Status.PENDING or hours < AGE_WARN_HOURS:
        css = "age-ok"
    elif hours < AGE_BAD_HOURS:
        css = "age-warn"
    else:
        css = "age-bad"
    return text, css


def inbox_rows(approvals, user) -> list[dict]:
    now = timezone.now()
    rows = []
    for a in approvals:
        age, age_class = _age(a, now)
        rows.append({"id": a.pk, "kind": a.kind, "kind_label": KIND_LABELS.get(a.kind, a.kind),
                     "document_id": a.document_id, "currency": a.currency,
                     "amount": None if a.kind in PERIOD_KINDS else fmt(a.amount, a.currency),
                     "entity": a.entity.code, "requester": a.requested_by_label,
                     "own": a.requested_by_id == user.pk, "given": a.given, "required": a.required_approvals,
                     "status": a.status, "age": age, "age_class": age_class, "created_at": a.created_at})
    return rows


def approval_for(user, pk) -> Approval | None:
    """One approval, or None when it does not exist or lies outside the user's entities."""
    qs = roles.scope(Approval.objects.select_related("entity", "requested_by", "journal", "event"), user,
                     "entity__code")
    return qs.filter(pk=pk).first()


# --------------------------------------------------------------------------------------------- detail
def _policy(approval: Approval) -> dict:
    policy = ApprovalPolicy.objects.filter(entity=approval.entity).first() or ApprovalPolicy(entity=approval.entity)
    c = approval.currency
    threshold = {"credit_note": policy.credit_note_threshold, "write_off": policy.write_off_threshold,
                 "manual_journal": policy.manual_journal_threshold}[approval.kind]
    label = KIND_LABELS[approval.kind].lower() + "s"
    needs = (f"every {KIND_LABELS[approval.kind].lower()} needs approval" if threshold == ZERO
             else f"{label} of {fmt(threshold, c)} {c} or more need approval")
    amount = fmt(approval.amount, c)
    two = fmt(policy.two_approver_threshold, c)
    if approval.required_approvals >= 2:
        why = (f"{amount} {c} is at or above the two-approver threshold of {two} {c}, so two different "
               "controllers must approve it.")
    else:
        why = f"{amount} {c} is below the two-approver threshold of {two} {c}, so one controller's approval is enough."
    return {"entity": approval.entity.code, "currency": c,
            "credit_note_threshold": fmt(policy.credit_note_threshold, c),
            "write_off_threshold": fmt(policy.write_off_threshold, c),
            "manual_journal_threshold": fmt(policy.manual_journal_threshold, c),
            "two_approver_threshold": two, "rule": needs[0].upper() + needs[1:] + ".", "why": why,
            "required": approval.required_approvals}


def journal_view(journal) -> dict | None:
    if journal is None:
        return None  # a journal-less approval (a period close or reopen)
    c = journal.entity.currency
    lines = list(journal.lines.select_related("account").order_by("line_no"))
    return {"id": journal.pk, "status": journal.status, "kind": journal.kind, "description": journal.description,
            "accounting_date": journal.accounting_date, "erp_document_ref": journal.erp_document_ref,
            "posted_at": journal.posted_at, "last_error": journal.last_error,
            "lines": [{"no": ln.line_no, "account": ln.account.code, "account_name": ln.account.name,
                       "debit": fmt(ln.debit, c) if ln.debit else "", "credit": fmt(ln.credit, c) if ln.credit else "",
                       "memo": ln.memo, "invoice_id": ln.invoice_id, "customer_id": ln.customer_id,
                       "jurisdiction": ln.jurisdiction} for ln in lines],
            "total_debit": fmt(sum((ln.debit for ln in lines), ZERO), c),
            "total_credit": fmt(sum((ln.credit for ln in lines), ZERO), c)}


def _document(approval: Approval):
    """The credit note or write-off the approval is about, and its invoice (None for manual journals)."""
    journal = approval.journal
    if approval.kind == Approval.Kind.CREDIT_NOTE:
        doc = (CreditNote.objects.select_related("invoice").filter(
            source_system=journal.source_system, credit_note_id=journal.document_id).first())
    elif approval.kind == Approval.Kind.WRITE_OFF:
        doc = (WriteOff.objects.select_related("invoice").filter(
            source_system=journal.source_system, write_off_id=journal.document_id).first())
    else:
        return None, None
    return doc, doc.invoice if doc else None


def _open_amount_expr():
    return ExpressionWrapper(F("total") - F("applied_total") - F("credited_total") - F("written_off_total")
                             + F("refunded_total"), output_field=DecimalField(max_digits=20, decimal_places=4))


def _display(field: str, value, currency: str) -> str:
    if value is None or value == "":
        return "—"
    if field in MONEY_FIELDS:
        return fmt(value, currency)
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return str(value)


def invoice_history(invoice) -> list[dict]:
    """The invoice's versions, oldest first, each with the fields it changed (old → new)."""
    versions = list(invoice.history.select_related("history_user").order_by("history_date", "history_id"))
    out, previous = [], None
    for version in versions:
        if previous is None:
            changes = [{"field": "Created", "old": "", "new": f"total {fmt(version.total, invoice.currency)}, "
                                                             f"version {version.version}"}]
        else:
            # The journal pointer moves with every amendment and says nothing a reader needs here.
            delta = version.diff_against(previous, foreign_keys_are_objs=True, excluded_fields=[
                "id", "created_at", "source_system", "invoice_id", "entity", "currency", "current_journal"])
            changes = [{"field": INVOICE_FIELDS.get(ch.field, ch.field.replace("_", " ").capitalize()),
                        "old": _display(ch.field, ch.old, invoice.currency),
                        "new": _display(ch.field, ch.new, invoice.currency)} for ch in delta.changes]
        if changes:
            out.append({"at": version.history_date, "type": {"+": "created", "~": "changed", "-": "deleted"}.get(
                version.history_type, version.history_type),
                "by": version.history_user.get_username() if version.history_user_id else "system",
                "changes": changes})
        previous = version
    return out


def invoice_view(invoice) -> dict:
    c = invoice.currency
    customer = invoice.customer
    balance = (Invoice.objects.filter(customer=customer, status=Invoice.Status.OPEN)
               .aggregate(open=Coalesce(Sum(_open_amount_expr()), ZERO, output_field=DecimalField()),
                          count=Count("id")))
    return {
        "pk": invoice.pk, "number": invoice.number, "invoice_id": invoice.invoice_id,
        "source_system": invoice.source_system, "status": invoice.status, "version": invoice.version,
        "settlement": invoice.settlement, "settlement_label": invoice.settlement_label,
        "issue_date": invoice.issue_date, "due_date": invoice.due_date, "currency": c,
        "total": fmt(invoice.total, c), "applied": fmt(invoice.applied_total, c),
        "credited": fmt(invoice.credited_total, c), "written_off": fmt(invoice.written_off_total, c),
        "refunded": fmt(invoice.refunded_total, c), "open_amount": fmt(invoice.open_amount, c),
        "ledger_open_amount": fmt(receivable_balance(entity=invoice.entity, source_system=invoice.source_system,
                                                     invoice_id=invoice.invoice_id), c),
        "customer": {"id": customer.customer_id, "name": customer.name, "balance": fmt(balance["open"], c),
                     "open_invoices": balance["count"]},
        "allocations": [{"payment_id": a.payment.payment_id, "amount": fmt(a.amount, c), "at": a.created_at,
                         "method": a.payment.method}
                        for a in invoice.allocations.select_related("payment").order_by("created_at", "id")],
        "credit_notes": [{"id": n.credit_note_id, "amount": fmt(n.amount, c), "tax": fmt(n.tax_amount, c),
                          "gross": fmt(n.gross, c), "status": n.status, "reason": n.reason}
                         for n in invoice.credit_notes.order_by("id")],
        "write_offs": [{"id": w.write_off_id, "amount": fmt(w.amount, c), "status": w.status, "reason": w.reason}
                       for w in invoice.write_offs.order_by("id")],
        "refunds": [{"id": r.refund_id, "amount": fmt(r.amount, c), "payment_id": r.payment.payment_id}
                    for r in invoice.refunds.select_related("payment").order_by("id")],
        "history": invoice_history(invoice),
    }


def approval_context(approval: Approval, user) -> dict:
    """Everything the detail page shows, and what `user` may do with it (the service decides again)."""
    decisions = list(approval.decisions.select_related("user").order_by("at", "id"))
    given = sum(1 for d in decisions if d.decision == ApprovalDecision.Decision.APPROVE)
    mine = next((d for d in decisions if d.user_id == user.pk), None)
    own = approval.requested_by_id is not None and approval.requested_by_id == user.pk
    pending = approval.status == Approval.Status.PENDING
    doc, invoice = _document(approval)
    c = approval.currency
    event = approval.event
    period = approval.kind in PERIOD_KINDS
    return {
        "approval": approval,
        "kind_label": KIND_LABELS.get(approval.kind, approval.kind),
        "amount": fmt(approval.amount, c),
        "given": given, "required": approval.required_approvals,
        "pending": pending, "own_request": own, "my_decision": mine,
        "can_decide": pending and not own and mine is None and may_decide(user),
        "decisions": [{"user": d.user.get_username(), "decision": d.decision, "comment": d.comment, "at": d.at}
                      for d in decisions],
        "policy": None if period else _policy(approval),
        "period": _period_view(approval) if period else None,
        "journal": journal_view(approval.journal),
        "document": None if doc is None else {
            "id": approval.document_id, "status": doc.status, "reason": doc.reason,
            "amount": fmt(doc.amount, c), "tax": fmt(getattr(doc, "tax_amount", ZERO), c),
            "taxes": getattr(doc, "taxes", [])},
        "invoice": invoice_view(invoice) if invoice is not None else None,
        "event": None if event is None else {
            "id": event.pk, "event_id": event.event_id, "source_system": event.source_system, "type": event.type,
            "status": event.status, "received_at": event.received_at,
            "manual": event.event_id.startswith("tieout-manual-")},
    }


def _period_view(approval: Approval) -> dict:
    """What a controller reads before deciding a period close or reopen: the month, its live close checks
    (a close is recorded with the checks as they are when it is approved) and the close page."""
    _, code, label = approval.subject.split(":")
    year, month = close_selectors.parse_month(label)
    result = close_selectors.checks(approval.entity, year, month)
    return {"entity": code, "period": label, "checks": result, "failing": [c for c in result if not c["ok"]],
            "url": reverse("web-close-month", args=[code, label]),
            "close": approval.kind == Approval.Kind.PERIOD_CLOSE}
