"""Manual adjustments API: `POST /api/v1/adjustments/credit-memos` and `/write-offs` let a person raise a
credit memo or write-off against an invoice via `billing_sync.adjustments`, i.e. through the events pipeline
(receipt, event, rules, journal, approval) with the caller as sender. 201 with what became of it; refusals are
RFC 9457 problems with the pipeline's stable codes (`over_credit`, `over_write_off`, `invalid_event`). An
optional `Idempotency-Key` makes a retry return the first outcome (same key, other invoice or amount: `409
idempotency_conflict`)."""
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from billing_sync import adjustments, selectors
from billing_sync.services import event_resource
from config import roles
from config.errors import NotFound
from exceptions_queue.selectors import exception_brief
from exceptions_queue.serializers import ApprovalSerializer

RAISERS = roles.roles_allowed(*adjustments.RAISERS)


class _Target(serializers.Serializer):
    source_system = serializers.CharField(max_length=100)
    invoice_id = serializers.CharField(max_length=200)
    # Money stays a string here: the service parses it with the API's money rules and names the field.
    amount = serializers.CharField(max_length=40, trim_whitespace=True)
    reason = serializers.CharField(max_length=2000, allow_blank=True, required=False, default="")


class _Tax(serializers.Serializer):
    jurisdiction = serializers.CharField(max_length=60)
    amount = serializers.CharField(max_length=40)


class CreditMemoRequest(_Target):
    tax_amount = serializers.CharField(max_length=40, required=False, allow_blank=True, allow_null=True)
    tax_jurisdiction = serializers.CharField(max_length=60, required=False, allow_blank=True, allow_null=True)
    taxes = _Tax(many=True, required=False)


class WriteOffRequest(_Target):
    pass


def adjustment_resource(result: adjustments.ManualAdjustment) -> dict:
    event = result.event
    journal = result.journal
    return {
        "kind": result.kind, "document_id": result.document_id, "status": result.status,
        "event": event_resource(event_id=event.pk, source_system=event.source_system, external_id=event.event_id,
                                type_=event.type, entity=event.entity_code, status=result.status,
                                correlation_id=event.correlation_id, received_at=event.received_at,
                                journal_ids=[journal.pk] if journal else [],
                                exception=exception_brief(result.exception) if result.exception else None),
        "journal": {"id": str(journal.pk), "status": journal.status} if journal else None,
        "approval": ApprovalSerializer(result.approval).data if result.approval else None,
    }


def _key(request) -> str | None:
    """An optional Idempotency-Key: a retried call with the same key is answered with the first outcome."""
    return (request.headers.get("Idempotency-Key") or "").strip()[:200] or None


def _invoice(request, body: dict):
    invoice = selectors.invoice_by_identity(body["source_system"], body["invoice_id"])
    if invoice is None or not roles.may_see_entity(request.user, invoice.entity.code):
        raise NotFound(f"no invoice {body['source_system']}/{body['invoice_id']}")
    return invoice


class CreditMemoView(APIView):
    permission_classes = [RAISERS]

    @extend_schema(operation_id="adjustments_credit_memo_create", request=CreditMemoRequest, responses={
        201: OpenApiResponse(description="The adjustment: event, journal, approval (or null when it posted)"),
        422: OpenApiResponse(description="over_credit | invalid_event"), 404: OpenApiResponse(description="not_found")})
    def post(self, request):
        body = CreditMemoRequest(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        result = adjustments.manual_credit_memo_raise(
            invoice=_invoice(request, data), amount=data["amount"], reason=data.get("reason"), user=request.user,
            tax_amount=data.get("tax_amount"), tax_jurisdiction=data.get("tax_jurisdiction"),
            taxes=data.get("taxes"), remote_addr=request.META.get("REMOTE_ADDR"),
            request_key=_key(request))
        return Response(adjustment_resource(result), status=201)


class WriteOffView(APIView):
    permission_classes = [RAISERS]

    @extend_schema(operation_id="adjustments_write_off_create", request=WriteOffRequest, responses={
        201: OpenApiResponse(description="The adjustment: event, journal, approval"),
        422: OpenApiResponse(description="over_write_off | invalid_event"),
        404: OpenApiResponse(description="not_found")})
    def post(self, request):
        body = WriteOffRequest(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        result = adjustments.manual_write_off_raise(
            invoice=_invoice(request, data), amount=data["amount"], reason=data.get("reason"), user=request.user,
            remote_addr=request.META.get("REMOTE_ADDR"), request_key=_key(request))
        return Response(adjustment_resource(result), status=201)

