"""The read side's endpoints: traces (the chain of custody of an event, a journal, an invoice, an exception or
an ERP document reference, both ways, with every step's audit entries, see `portal.lineage`), the period close
(a month's live close checks and status; close, or ask a second controller to close anyway or to reopen, see
`portal.services.close`), the receivables and cash reports (AR aging, unapplied cash, customer statements) and
the ledger export. Every reader role may read (finance_ops, controller, auditor, admin); source systems only
their own events' traces, at /events/{id}/trace; controllers and admins close and reopen. Anything outside the
caller's entities answers 404 problem+json, exactly like something that does not exist."""
import datetime

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.response import Response
from rest_framework.views import APIView

from billing_sync import selectors as billing_selectors
from billing_sync.views.events import ARCHIVED_RESPONSE, EVENT_READERS, event_or_gone
from config import roles
from config.errors import ApiError, Codes, NotFound
from exceptions_queue import selectors
from exceptions_queue.serializers import ApprovalSerializer
from ledger import selectors as ledger_selectors
from portal import exports, ledger_export, lineage, services
from portal.report_serializers import ArAgingReport, CustomerStatement, UnappliedCashReport
from portal.selectors import close as close_selectors
from portal.selectors import reports
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

    @extend_schema(responses={200: EventTraceSerializer, 410: ARCHIVED_RESPONSE})
    def get(self, request, pk):
        event, gone = event_or_gone(request, pk)
        return gone or Response(lineage.event_trace(event.pk))


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


# --------------------------------------------------------------------------------------------- reports
REPORT_READERS = TRACE_READERS
# Dates a report accepts: anything a person means (date arithmetic on year 1 or 9999 would overflow).
_FIRST_DAY, _LAST_DAY = datetime.date(1900, 1, 1), datetime.date(9998, 12, 31)


def _invalid(field: str, message: str):
    return ApiError(f"{field}: {message}", code=Codes.INVALID_REQUEST, status=400, title="Invalid request",
                    errors=[{"field": field, "message": message}])


def _date(request, name: str, default: datetime.date) -> datetime.date:
    raw = (request.query_params.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = datetime.date.fromisoformat(raw)
    except ValueError:
        raise _invalid(name, "Must be a date in YYYY-MM-DD form.") from None
    if not _FIRST_DAY <= value <= _LAST_DAY:
        raise _invalid(name, f"Must be between {_FIRST_DAY} and {_LAST_DAY}.")
    return value


def _entity(request):
    code = (request.query_params.get("entity") or "").strip()
    if not code:
        raise _invalid("entity", "This field is required.")
    entity = reports.visible_entity(request.user, code) if "\x00" not in code else None
    if entity is None:
        raise NotFound(f"no entity {code}")
    return entity


def _date_range(request) -> tuple[datetime.date, datetime.date]:
    """`from` and `to` (both included): by default the current month up to today."""
    date_to = _date(request, "to", reports.today())
    date_from = _date(request, "from", date_to.replace(day=1))
    if date_from > date_to:
        raise _invalid("from", "The period ends before it starts.")
    return date_from, date_to


_ENTITY = OpenApiParameter("entity", str, required=True, description="the entity's code")
_AS_OF = OpenApiParameter("as_of", OpenApiTypes.DATE, description="the report date (default today)")
_FROM = OpenApiParameter("from", OpenApiTypes.DATE, description="first day (default: the first of `to`'s month)")
_TO = OpenApiParameter("to", OpenApiTypes.DATE, description="last day (default today)")


class ArAgingView(APIView):
    permission_classes = [REPORT_READERS]

    @extend_schema(operation_id="reports_ar_aging", parameters=[_ENTITY, _AS_OF],
                   responses={200: ArAgingReport, 404: _NOT_FOUND},
                   description="Receivables by customer and days past due as of a date: each invoice's balance "
                               "on the receivable account (posted journals dated on or before as_of), against "
                               "that account's balance; `ties_out` and the difference when it does not.")
    def get(self, request):
        entity = _entity(request)
        as_of = _date(request, "as_of", reports.today())
        report = billing_selectors.ar_aging(entity=entity, as_of=as_of, as_json=True)
        # The body is JSON already (PostgreSQL writes the customers' array): no serializer, no renderer.
        return HttpResponse(reports.ar_aging_json(report), content_type="application/json")


class UnappliedCashView(APIView):
    permission_classes = [REPORT_READERS]

    @extend_schema(operation_id="reports_unapplied_cash", parameters=[_ENTITY, _AS_OF],
                   responses={200: UnappliedCashReport, 404: _NOT_FOUND},
                   description="Unapplied cash by customer and days since the payment was received, as of a "
                               "date, against the unapplied cash account's balance.")
    def get(self, request):
        entity = _entity(request)
        as_of = _date(request, "as_of", reports.today())
        report = billing_selectors.unapplied_cash_aging(entity=entity, as_of=as_of, as_json=True)
        return HttpResponse(reports.unapplied_cash_json(report), content_type="application/json")


class CustomerStatementView(APIView):
    permission_classes = [REPORT_READERS]

    @extend_schema(operation_id="customer_statement", responses={200: CustomerStatement, 404: _NOT_FOUND},
                   parameters=[_FROM, _TO, OpenApiParameter("entity", str, description=(
                       "the entity, when the customer has documents in several"))],
                   description="Invoices, payments, credit notes, refunds and write-offs of one customer over a "
                               "period, with the opening balance, a running balance and the closing balance.")
    def get(self, request, source_system, customer_id):
        date_from, date_to = _date_range(request)
        if "\x00" in source_system + customer_id:  # no such text can be stored (PostgreSQL refuses NUL)
            raise NotFound(f"no customer {source_system}/{customer_id}")
        try:
            target = reports.statement_target(request.user, source_system, customer_id,
                                              (request.query_params.get("entity") or "").strip())
        except reports.AmbiguousEntity as ambiguous:
            raise _invalid("entity", f"The customer has documents in {', '.join(ambiguous.codes)}: name one.") from None
        if target is None:
            raise NotFound(f"no customer {source_system}/{customer_id}")
        customer, entity = target
        statement = billing_selectors.customer_statement(customer=customer, entity=entity, date_from=date_from,
                                                         date_to=date_to)
        return Response(reports.statement_body(statement))


class _FileFormatNegotiation(DefaultContentNegotiation):
    """Here `format` names the export's file format, not one of DRF's renderers (its URL format override):
    answers other than the file (problems) are JSON."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class LedgerExportView(APIView):
    permission_classes = [REPORT_READERS]
    content_negotiation_class = _FileFormatNegotiation

    @extend_schema(operation_id="ledger_export", parameters=[
        _ENTITY, _FROM, _TO,
        OpenApiParameter("format", str, enum=list(ledger_export.FORMATS), description="csv (default) or beancount")],
        responses={(200, "text/csv"): OpenApiTypes.STR, (200, "text/plain"): OpenApiTypes.STR, 404: _NOT_FOUND},
        description="An entity's posted journals dated in the period: CSV (one row per line) or a Beancount "
                    "file (accounts opened, opening balances, one transaction per journal, closing balance "
                    "assertions) that `bean-check` accepts. Streamed.")
    def get(self, request):
        entity = _entity(request)
        date_from, date_to = _date_range(request)
        fmt_name = (request.query_params.get("format") or "csv").strip()
        if fmt_name not in ledger_export.FORMATS:
            raise _invalid("format", f"Must be one of {', '.join(ledger_export.FORMATS)}.")
        ledger_export.record_export(entity, date_from, date_to, fmt_name, actor=request.user, via="api")
        return exports.stream_response(ledger_export.chunks(entity, date_from, date_to, fmt_name),
                                       ledger_export.filename(entity, date_from, date_to, fmt_name),
                                       ledger_export.content_type(fmt_name))

