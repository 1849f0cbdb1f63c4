"""Billing-sync reads: event resources (batched, no N+1), event lists, canonical invoices, status callbacks."""
import django_filters

from billing_sync.models import CallbackDelivery, Event, Invoice
from billing_sync.services import event_resource
from config import roles
from ledger.money import fmt


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


def event_resources(events) -> list[dict]:
    from exceptions_queue.selectors import latest_exceptions
    from ledger.selectors import journals_for_event_ids

    ids = [e.pk for e in events]
    journals = journals_for_event_ids(ids)
    exceptions = latest_exceptions(ids)
    return [event_resource(event_id=e.pk, source_system=e.source_system, external_id=e.event_id, type_=e.type,
                           entity=e.entity_code, status=e.status, correlation_id=e.correlation_id,
                           received_at=e.received_at, journal_ids=journals.get(e.pk, []),
                           exception=exceptions.get(e.pk)) for e in events]


def invoice_resource(invoice: Invoice) -> dict:
    from ledger.selectors import receivable_balance

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
        "lines": [{"line_id": line.line_id, "description": line.description, "amount": fmt(line.amount, c),
                   "revenue_account": line.revenue_account or None, "taxes": line.taxes}
                  for line in invoice.lines.order_by("id")],
    }


def invoice_by_identity(source_system: str, invoice_id: str) -> Invoice | None:
    return (Invoice.objects.select_related("entity", "customer")
            .filter(source_system=source_system, invoice_id=invoice_id).first())


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
