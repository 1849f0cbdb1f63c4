"""Manual journals API: `POST /api/v1/journals/manual` (finance operations, controllers, admins).

The view translates the request into `ledger.services.manual_journal_create`, which checks the lines
(active accounts of the entity, one side each, balanced, open period) and asks for approval under the
entity's policy. 201 with the journal and its approval (null when none was needed); refusals are RFC 9457
problems (`invalid_request`, `unknown_account`, `unbalanced_journal`, `period_closed`) naming the fields.
An optional `Idempotency-Key` header makes a retried call return the journal the first call created.
"""
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from config import roles
from config.errors import NotFound
from ledger import selectors, services
from ledger.models import Entity
from ledger.serializers import JournalSerializer

RAISERS = roles.roles_allowed(*services.MANUAL_JOURNAL_RAISERS)


class ManualLine(serializers.Serializer):
    account = serializers.CharField(max_length=30)
    # Money stays a string: the service applies the API's money rules and names the line.
    debit = serializers.CharField(max_length=40, required=False, allow_blank=True, default="")
    credit = serializers.CharField(max_length=40, required=False, allow_blank=True, default="")
    memo = serializers.CharField(max_length=300, required=False, allow_blank=True, default="")


class ManualJournalRequest(serializers.Serializer):
    entity = serializers.CharField(max_length=20)
    accounting_date = serializers.DateField()
    description = serializers.CharField(max_length=300, allow_blank=True, required=False, default="")
    lines = ManualLine(many=True, allow_empty=False, max_length=services.MANUAL_JOURNAL_MAX_LINES)


class ManualJournalView(APIView):
    permission_classes = [RAISERS]

    @extend_schema(operation_id="journals_manual_create", request=ManualJournalRequest, responses={
        201: OpenApiResponse(description='{"journal": <journal>, "approval": <approval> | null}'),
        422: OpenApiResponse(description="invalid_request | unknown_account | unbalanced_journal | period_closed"),
        404: OpenApiResponse(description="not_found (an entity outside the caller's)")})
    def post(self, request):
        from exceptions_queue.serializers import ApprovalSerializer

        body = ManualJournalRequest(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        entity = Entity.objects.filter(code=data["entity"]).first()
        if entity is None or not roles.may_see_entity(request.user, entity.code):
            raise NotFound(f"no entity {data['entity']}")
        journal = services.manual_journal_create(
            entity=entity, accounting_date=data["accounting_date"], description=data["description"],
            lines=[(ln["account"], ln["debit"], ln["credit"], ln["memo"]) for ln in data["lines"]],
            user=request.user, request_key=(request.headers.get("Idempotency-Key") or "").strip()[:200] or None)
        journal = selectors.journals().get(pk=journal.pk)
        approval = getattr(journal, "approval", None)  # the reverse one-to-one raises AttributeError when absent
        return Response({"journal": JournalSerializer(journal).data,
                         "approval": ApprovalSerializer(approval).data if approval else None}, status=201)
