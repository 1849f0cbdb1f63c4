"""Where the trace search leads: the event, journal, exception, ERP document or invoice a reader typed the id
or reference of, looked for only inside the reader's entities (config.roles.scope), so ids of other entities
cannot be probed. `locate(...)` answers with a `Target` (which page, with which arguments) and leaves the
URLs to the page; an ERP reference found in several entities raises `Ambiguous` with their codes.
"""
import uuid
from dataclasses import dataclass

from billing_sync.models import Event, Invoice
from config import roles
from exceptions_queue.selectors import visible_exception
from ledger.models import ErpBatch, Journal


@dataclass(frozen=True)
class Target:
    """What was found: `kind` is one of event, journal, exception, erp, invoice; `args` name it."""

    kind: str
    args: tuple


class Ambiguous(Exception):
    """The reference is an ERP document of several entities: the reader must say which."""

    def __init__(self, entities):
        super().__init__(entities)
        self.entities = entities


def _as_uuid(text: str):
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def locate(user, query: str, entity: str) -> Target | None:
    """What the search text names, inside the user's entities (only `entity`, when given); None if nothing."""
    codes = [entity] if entity else None  # None: every entity the user sees
    events = roles.scope(Event.objects.all(), user, "entity_code")
    journals = roles.scope(Journal.objects.all(), user, "entity__code")
    invoices = roles.scope(Invoice.objects.all(), user, "entity__code")
    if codes:
        events, journals, invoices = (events.filter(entity_code__in=codes), journals.filter(entity__code__in=codes),
                                      invoices.filter(entity__code__in=codes))
    as_uuid = _as_uuid(query)
    if as_uuid is not None:
        if events.filter(pk=as_uuid).exists():
            return Target("event", (as_uuid,))
        if journals.filter(pk=as_uuid).exists():
            return Target("journal", (as_uuid,))
        if visible_exception(user, as_uuid) is not None:
            return Target("exception", (as_uuid,))
    # ERP references are unique per entity, not globally: the entity chosen (or the only one that has it).
    # Journals outside a batch and batches: both probe their unique (entity, erp_document_ref) index.
    ref_entities = set(journals.filter(erp_batch__isnull=True, erp_document_ref=query)
                       .values_list("entity__code", flat=True))
    ref_entities |= set(roles.scope(ErpBatch.objects.filter(erp_document_ref=query), user, "entity__code")
                        .filter(**({"entity__code__in": codes} if codes else {}))
                        .values_list("entity__code", flat=True))
    if len(ref_entities) == 1:
        return Target("erp", (ref_entities.pop(), query))
    if len(ref_entities) > 1:
        raise Ambiguous(sorted(ref_entities))
    invoice = invoices.filter(invoice_id=query).order_by("source_system").first()
    if invoice is not None:
        return Target("invoice", (invoice.source_system, invoice.invoice_id))
    event = events.filter(event_id=query).order_by("received_at").first()
    if event is not None:
        return Target("event", (event.pk,))
    return None
