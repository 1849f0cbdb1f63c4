"""Billing-sync reads: event resources (batched, no N+1), event lists and payloads, canonical invoices (and the
ones a signed-in person may see), status callbacks, API tokens (never their secret), reconciliation runs,
breaks and the reconciliation status (mark) of journals and documents."""
import django_filters
from django.db.models import Q
from django.utils import timezone

from billing_sync.models import (ApiToken, CallbackDelivery, Event, Invoice, ReconciliationBreak,
                                 ReconciliationMark, ReconciliationRun)
from billing_sync.services import event_resource
from config import roles
from exceptions_queue.selectors import latest_exceptions
from config.money import fmt
from ledger.selectors import journals_for_event_ids, receivable_balance


class EventFilter(django_filters.FilterSet):
    source_system = django_filters.CharFilter()
    event_id = django_filters.CharFilter()
    status = django_filters.CharFilter()
    type = django_filters.CharFilter()
    entity = django_filters.CharFilter(field_name="entity_code")
    received_after = django_filters.IsoDateTimeFilter(field_name="received_at", lookup_expr="gte")
    received_before = django_filters.IsoDateTimeFilter(field_name="received_at", lookup_expr="lt")

    class Meta:
        model = Event
        fields = ["source_system", "event_id", "status", "type", "entity"]


def events_visible_to(user, *, own_only: bool):
    """Source systems see what they sent; staff see the events of the entities they are granted."""
    qs = Event.objects.order_by("-received_at", "id").defer("payload", "response_body")
    return qs.filter(sent_by=user) if own_only else roles.scope(qs, user, "entity_code")


def event_payload(event_id) -> dict:
    """The payload an event arrived with, as stored; `Event.DoesNotExist` when there is no such event."""
    return Event.objects.values_list("payload", flat=True).get(pk=event_id)


def event_resources(events) -> list[dict]:
    ids = [e.pk for e in events]
    journals = journals_for_event_ids(ids)
    exceptions = latest_exceptions(ids)
    return [event_resource(event_id=e.pk, source_system=e.source_system, external_id=e.event_id, type_=e.type,
                           entity=e.entity_code, status=e.status, correlation_id=e.correlation_id,
                           received_at=e.received_at, journal_ids=journals.get(e.pk, []),
                           exception=exceptions.get(e.pk)) for e in events]


def invoice_resource(invoice: Invoice) -> dict:
    c = invoice.currency
    return {
        "source_system": invoice.source_system, "invoice_id": invoice.invoice_id, "number": invoice.number,
        "entity": invoice.entity.code, "customer_id": invoice.customer.customer_id, "currency": c,
        "issue_date": invoice.issue_date.isoformat(), "due_date": invoice.due_date.isoformat(),
        "status": invoice.status, "version": invoice.version,
        "subtotal": fmt(invoice.subtotal, c), "tax_total": fmt(invoice.tax_total, c), "total": fmt(invoice.total, c),
        "applied_total": fmt(invoice.applied_total, c), "credited_total": fmt(invoice.credited_total, c),
        "written_off_total": fmt(invoice.written_off_total, c), "refunded_total": fmt(invoice.refunded_total, c),
        "open_amount": fmt(invoice.open_amount, c),
        "ledger_open_amount": fmt(receivable_balance(entity=invoice.entity, source_system=invoice.source_system,
                                                     invoice_id=invoice.invoice_id), c),
        "reconciliation": reconciliation_status(f"invoice:{invoice.source_system}:{invoice.invoice_id}"),
        "lines": [{"line_id": line.line_id, "description": line.description, "amount": fmt(line.amount, c),
                   "revenue_account": line.revenue_account or None, "taxes": line.taxes}
                  for line in invoice.lines.order_by("id")],
    }


def invoice_by_identity(source_system: str, invoice_id: str) -> Invoice | None:
    return (Invoice.objects.select_related("entity", "customer")
            .filter(source_system=source_system, invoice_id=invoice_id).first())


def invoices_for(user):
    """The invoices of `user`'s entities, with their entity and customer."""
    return roles.scope(Invoice.objects.select_related("entity", "customer"), user, "entity__code")


def invoice_for(user, pk) -> Invoice | None:
    """One invoice of `user`'s entities, None when there is no such invoice or it is another entity's."""
    return invoices_for(user).filter(pk=pk).first()


def invoices_search(user, text: str):
    """The invoices of `user`'s entities whose id or number is (or contains) `text`, newest issued first; with
    no text, the open ones."""
    invoices = invoices_for(user)
    if text:
        invoices = invoices.filter(Q(invoice_id=text) | Q(number__iexact=text) | Q(number__icontains=text)
                                   | Q(invoice_id__icontains=text))
    else:
        invoices = invoices.filter(status=Invoice.Status.OPEN)
    return invoices.order_by("-issue_date", "-id")


class CallbackDeliveryFilter(django_filters.FilterSet):
    kind = django_filters.CharFilter()
    status = django_filters.CharFilter()

    class Meta:
        model = CallbackDelivery
        fields = ["kind", "status"]


def callback_deliveries_for_event(event_id):
    """Status callbacks of one event, oldest first (the order they were caused in)."""
    return (CallbackDelivery.objects.filter(event_id=event_id).select_related("source_system")
            .defer("payload").order_by("created_at", "id"))


def callback_delivery_resource(delivery) -> dict:
    def iso(value):
        return value.isoformat().replace("+00:00", "Z") if value else None

    return {"id": str(delivery.pk), "event": str(delivery.event_id), "source_system": delivery.source_system.name,
            "kind": delivery.kind, "status": delivery.status, "attempts": delivery.attempts,
            "last_status_code": delivery.last_status_code, "last_error": delivery.last_error or None,
            "created_at": iso(delivery.created_at), "delivered_at": iso(delivery.delivered_at),
            "next_attempt_at": iso(delivery.next_attempt_at) if delivery.status == "pending" else None,
            "exception": str(delivery.exception_id) if delivery.exception_id else None}


# --------------------------------------------------------------------------------------------- API tokens
class ApiTokenFilter(django_filters.FilterSet):
    user = django_filters.CharFilter(field_name="user__username")
    state = django_filters.ChoiceFilter(choices=[(s, s) for s in ("active", "expired", "revoked")],
                                        method="filter_state")

    class Meta:
        model = ApiToken
        fields = ["user", "state"]

    def filter_state(self, queryset, name, value):
        now = timezone.now()
        if value == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        expired = Q(expires_at__isnull=False, expires_at__lte=now)
        queryset = queryset.filter(revoked_at__isnull=True)
        return queryset.filter(expired) if value == "expired" else queryset.exclude(expired)


def api_tokens():
    """Every API token, newest first, with its user (never the secret: only its SHA-256 is stored)."""
    return ApiToken.objects.select_related("user").defer("key_hash").order_by("-created_at", "-id")


def api_token(token_id) -> ApiToken | None:
    return api_tokens().filter(pk=token_id).first()


def unrevoked_tokens_of(username: str) -> list[ApiToken]:
    """A user's tokens not revoked yet (expired ones included), oldest first."""
    return list(api_tokens().filter(user__username=username, revoked_at__isnull=True).order_by("created_at", "id"))


def token_state(token: ApiToken) -> str:
    if token.revoked_at is not None:
        return "revoked"
    return "expired" if token.is_expired() else "active"


def api_token_resource(token: ApiToken) -> dict:
    def iso(value):
        return value.isoformat().replace("+00:00", "Z") if value else None

    return {"id": token.pk, "user": token.user.get_username(), "name": token.name, "prefix": token.prefix,
            "state": token_state(token), "created_at": iso(token.created_at), "expires_at": iso(token.expires_at),
            "last_used_at": iso(token.last_used_at), "revoked_at": iso(token.revoked_at),
            "source_systems": token.source_systems, "entities": token.entities}


# --------------------------------------------------------------------------------------------- reconciliation
def _iso(value):
    return value.isoformat().replace("+00:00", "Z") if value else None


def reconciliation_runs_for(user):
    """Reconciliation runs of `user`'s entities, newest first."""
    return roles.scope(ReconciliationRun.objects.select_related("entity").order_by("-started_at", "-id"), user,
                       "entity__code")


def reconciliation_run_resource(run: ReconciliationRun) -> dict:
    return {"id": str(run.pk), "entity": run.entity.code, "from": run.date_from.isoformat(),
            "to": run.date_to.isoformat(), "full": run.full, "subject": run.subject or None, "status": run.status,
            "requested_by": run.requested_by, "started_at": _iso(run.started_at), "finished_at": _iso(run.finished_at),
            "erp_modified_since": _iso(run.erp_modified_since), "matched": run.matched, "breaks": run.breaks,
            "resolved": run.resolved, "erp_requests": run.erp_requests, "erp_documents": run.erp_documents,
            "error": run.error or None}


class ReconciliationBreakFilter(django_filters.FilterSet):
    entity = django_filters.CharFilter(field_name="entity__code")
    code = django_filters.ChoiceFilter(choices=ReconciliationBreak.Code.choices)
    status = django_filters.ChoiceFilter(choices=ReconciliationBreak.Status.choices)
    document = django_filters.CharFilter()
    journal = django_filters.UUIDFilter(field_name="journal_id")
    run = django_filters.NumberFilter(field_name="last_seen_run_id")

    class Meta:
        model = ReconciliationBreak
        fields = ["entity", "code", "status", "document", "journal", "run"]


def reconciliation_breaks_for(user):
    """Reconciliation breaks of `user`'s entities, newest first."""
    return roles.scope(ReconciliationBreak.objects.select_related("entity").order_by("-opened_at", "-id"), user,
                       "entity__code")


def reconciliation_break_resource(brk: ReconciliationBreak) -> dict:
    return {"id": str(brk.pk), "code": brk.code, "status": brk.status, "entity": brk.entity.code,
            "account": brk.account or None, "period": brk.period or None,
            "journal": str(brk.journal_id) if brk.journal_id else None,
            "erp_document_ref": brk.erp_document_ref or None, "document": brk.document or None,
            "expected": brk.expected, "actual": brk.actual, "opened_at": _iso(brk.opened_at),
            "resolved_at": _iso(brk.resolved_at), "exception": str(brk.exception_id) if brk.exception_id else None,
            "resolution": brk.resolution or None, "resolved_by": brk.resolved_by or None,
            "accepted_by": brk.accepted_by or None, "opened_by_run": str(brk.opened_by_run_id),
            "last_seen_run": str(brk.last_seen_run_id),
            "resolved_by_run": str(brk.resolved_by_run_id) if brk.resolved_by_run_id else None,
            "adjusting_journal": str(brk.adjusting_journal_id) if brk.adjusting_journal_id else None}


UNRECONCILED = {"status": "unreconciled", "checked_at": None, "run": None}


def reconciliation_statuses(subjects) -> dict[str, dict]:
    """The reconciliation status of journals and documents by subject (`journal:<uuid>`,
    `invoice:<source_system>:<id>`, ...): `{"status": unreconciled | matched | break, "checked_at", "run"}`; a
    subject never checked is unreconciled. `checked_at` and `run` say when the status was last set (a run
    writes a mark only when the status changes)."""
    subjects = list(subjects)
    found = {m.subject: {"status": m.status, "checked_at": _iso(m.checked_at), "run": str(m.run_id)}
             for m in ReconciliationMark.objects.filter(subject__in=subjects)}
    return {subject: found.get(subject, dict(UNRECONCILED)) for subject in subjects}


def reconciliation_status(subject: str) -> dict:
    return reconciliation_statuses([subject])[subject]


def journal_reconciliation_statuses(journal_ids) -> dict:
    """`reconciliation_statuses` by journal id (the ledger's journal resources ask this, installed at start-up)."""
    by_subject = reconciliation_statuses([f"journal:{pk}" for pk in journal_ids])
    return {pk: by_subject[f"journal:{pk}"] for pk in journal_ids}
