"""Trace endpoints of the API: the chain of custody of an event, a journal, an invoice, an exception or an ERP
document reference, both ways, with every step's audit entries (see `portal.lineage`). Every reader role may
call them (finance_ops, controller, auditor, admin); source systems only their own events' traces, at
/events/{id}/trace. Anything outside the caller's entities answers 404 problem+json, exactly like something
that does not exist."""
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from billing_sync.views.events import EVENT_READERS, event_for
from config import roles
from config.errors import ApiError, Codes, NotFound
from exceptions_queue import selectors
from portal import lineage
from portal.serializers import (
    ErpReferenceTraceSerializer,
    EventTraceSerializer,
    ExceptionTraceSerializer,
    InvoiceTraceSerializer,
    JournalTraceSerializer,
)

TRACE_READERS = roles.roles_allowed(*roles.READ_ALL)
_NOT_FOUND = OpenApiResponse(description="not_found (problem+json): unknown, or outside your entities")


def _traced(build, *args, user):
    try:
        return Response(build(*args, user=user))
    except lineage.TraceNotFound as missing:
        raise NotFound(str(missing)) from None


# Source systems too: each reads the traces of the events it sent (billing_sync.views.events.event_for decides).
class EventTraceView(APIView):
    permission_classes = [EVENT_READERS]

    @extend_schema(responses={200: EventTraceSerializer})
    def get(self, request, pk):
        return Response(lineage.event_trace(event_for(request, pk).pk))


class JournalTraceView(APIView):
    permission_classes = [TRACE_READERS]

    @extend_schema(operation_id="journal_trace", responses={200: JournalTraceSerializer, 404: _NOT_FOUND},
                   description="A journal back to its event and invoices, forward to its ERP attempts, batch, "
                               "reversals, related journals, approvals, exceptions and reconciliation.")
    def get(self, request, pk):
        return _traced(lineage.journal_trace, pk, user=request.user)


class InvoiceTraceView(APIView):
    permission_classes = [TRACE_READERS]

    @extend_schema(operation_id="invoice_trace", responses={200: InvoiceTraceSerializer, 404: _NOT_FOUND},
                   description="Every event, version (field diffs), journal, approval, payment allocation, "
                               "credit note, write-off, refund, ERP attempt and exception of one invoice, and "
                               "its reconciliation (billing open vs ledger open).")
    def get(self, request, source_system, invoice_id):
        return _traced(lineage.invoice_trace, source_system, invoice_id, user=request.user)


class ExceptionTraceView(APIView):
    permission_classes = [TRACE_READERS]

    @extend_schema(operation_id="exception_trace", responses={200: ExceptionTraceSerializer, 404: _NOT_FOUND},
                   description="The exception's event trace (or its journal's) with its own audit entries.")
    def get(self, request, pk):
        exc = selectors.visible_exception(request.user, pk)
        if exc is None:
            raise NotFound(f"no exception {pk}")
        return Response(lineage.exception_trace(exc.pk))


class ErpReferenceTraceView(APIView):
    permission_classes = [TRACE_READERS]

    @extend_schema(operation_id="erp_reference_trace", responses={
        200: ErpReferenceTraceSerializer,
        400: OpenApiResponse(description="invalid_request: both parameters are required"), 404: _NOT_FOUND},
        parameters=[OpenApiParameter("erp_document_ref", str, required=True),
                    OpenApiParameter("entity", str, required=True)],
        description="An ERP document reference back to the journal (or batch and its journals) that carries "
                    "it, their events, invoices, approvals and exceptions.")
    def get(self, request):
        ref = (request.query_params.get("erp_document_ref") or "").strip()
        entity = (request.query_params.get("entity") or "").strip()
        if not ref or not entity:
            raise ApiError("erp_document_ref and entity are both required", code=Codes.INVALID_REQUEST,
                           status=400, title="Invalid request")
        return _traced(lineage.erp_reference_trace, entity, ref, user=request.user)
