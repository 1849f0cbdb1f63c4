"""The read side's endpoints: traces (the chain of custody of an event, a journal, an invoice, an exception or
an ERP document reference, both ways, with every step's audit entries, see `portal.lineage`) and the period
close (a month's live close checks and status; close, or ask a second controller to close anyway or to
reopen, see `portal.services.close`). Every reader role may read (finance_ops, controller, auditor, admin);
source systems only their own events' traces, at /events/{id}/trace; controllers and admins close and reopen.
Anything outside the caller's entities answers 404 problem+json, exactly like something that does not
exist."""
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from billing_sync.views.events import EVENT_READERS, event_for
from config import roles
from config.errors import ApiError, Codes, NotFound
from exceptions_queue import selectors
from exceptions_queue.serializers import ApprovalSerializer
from ledger import selectors as ledger_selectors
from portal import lineage, services
from portal.selectors import close as close_selectors
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


# --------------------------------------------------------------------------------------------- period close
CLOSE_DECIDERS = roles.roles_allowed(*roles.DECIDERS, read_roles=roles.READ_ALL)
_PERIOD_PARAMS = [OpenApiParameter("entity", str, OpenApiParameter.PATH),
                  OpenApiParameter("period", str, OpenApiParameter.PATH, description="YYYY-MM")]


def _period(request, entity: str, period: str):
    entity_obj = ledger_selectors.entity_for_code(entity)
    if entity_obj is None or not roles.may_see_entity(request.user, entity):
        raise NotFound(f"no entity {entity}")
    month = close_selectors.parse_month(period)
    if month is None:  # a malformed id names nothing, as everywhere in the API
        raise NotFound(f"no period {period} (a month is YYYY-MM)")
    return entity_obj, *month


def _reason(request) -> str:
    reason = request.data.get("reason", "") if hasattr(request.data, "get") else None
    if reason is None:
        reason = ""
    if not isinstance(reason, str):
        raise ApiError("reason must be text", code=Codes.INVALID_REQUEST, status=422,
                       errors=[{"field": "reason", "message": "Text."}])
    return reason


class PeriodCloseView(APIView):
    """GET /api/v1/periods/{entity}/{YYYY-MM}/close: the month's status, close record, live checks and pending
    requests. POST (controllers, admins) `{"reason"?}`: 200 closed when every check passes; with failing checks,
    202 and the approval a second controller decides (a reason is required: else 422 close_checks_failing);
    409 period_already_closed or approval_pending."""

    permission_classes = [CLOSE_DECIDERS]

    @extend_schema(parameters=_PERIOD_PARAMS, responses={200: dict, 404: _NOT_FOUND})
    def get(self, request, entity: str, period: str):
        entity_obj, year, month = _period(request, entity, period)
        return Response(close_selectors.period_resource(entity_obj, year, month))

    @extend_schema(parameters=_PERIOD_PARAMS, request=dict, responses={
        200: OpenApiResponse(description="closed: the period"),
        202: OpenApiResponse(description="approval_requested: the period and `approval`"),
        409: OpenApiResponse(description="period_already_closed | approval_pending"),
        422: OpenApiResponse(description="close_checks_failing (errors name the failing checks) | invalid_request"),
        404: _NOT_FOUND})
    def post(self, request, entity: str, period: str):
        entity_obj, year, month = _period(request, entity, period)
        outcome = services.period_close(entity=entity_obj, year=year, month=month, actor=request.user,
                                        reason=_reason(request))
        if outcome.status == "closed":
            return Response(close_selectors.period_resource(entity_obj, year, month, result=outcome.checks))
        body = close_selectors.period_resource(entity_obj, year, month, result=outcome.checks)
        body["approval"] = ApprovalSerializer(outcome.approval).data
        return Response(body, status=202)


class PeriodReopenView(APIView):
    """POST /api/v1/periods/{entity}/{YYYY-MM}/reopen `{"reason"}` (controllers, admins): 202 and the approval a
    second controller decides; 409 period_not_closed or approval_pending; 422 without a reason."""

    permission_classes = [roles.roles_allowed(*roles.DECIDERS)]

    @extend_schema(parameters=_PERIOD_PARAMS, request=dict, responses={
        202: OpenApiResponse(description="approval_requested: the period and `approval`"),
        409: OpenApiResponse(description="period_not_closed | approval_pending"),
        422: OpenApiResponse(description="invalid_request (a reason is required)"), 404: _NOT_FOUND})
    def post(self, request, entity: str, period: str):
        entity_obj, year, month = _period(request, entity, period)
        approval = services.period_reopen_request(entity=entity_obj, year=year, month=month, user=request.user,
                                                  reason=_reason(request))
        body = close_selectors.period_resource(entity_obj, year, month)
        body["approval"] = ApprovalSerializer(approval).data
        return Response(body, status=202)
