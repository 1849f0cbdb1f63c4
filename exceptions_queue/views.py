"""Approvals, exceptions and manual journals API: views translate HTTP into service calls; services enforce
the rules. `POST /api/v1/journals/manual` (workers) goes through `services.manual_journal_create` (the ledger
checks the lines: active accounts of the entity, one side each, balanced, open period; the entity's policy
decides the approval): 201 with the journal and its approval (null when none needed); refusals are RFC 9457
problems (`invalid_request`, `unknown_account`, `unbalanced_journal`, `period_closed`) naming the fields; an
optional `Idempotency-Key` header makes a retried call return the journal the first call created."""
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from config import roles
from config.errors import ApiError, Codes, NotFound
from exceptions_queue import selectors, services
from exceptions_queue.serializers import (
    ApprovalSerializer, AssignSerializer, CommentSerializer, EscalateSerializer, ExceptionCommentSerializer,
    ExceptionSerializer, ResolveSerializer,
)
from ledger import selectors as ledger_selectors
from ledger import services as ledger_services
from ledger.serializers import JournalSerializer

READERS = roles.roles_allowed(*roles.STAFF)
DECIDERS = roles.roles_allowed(*roles.DECIDERS)
WORKERS = roles.roles_allowed(*roles.WORKERS)


class ApprovalListView(generics.ListAPIView):
    permission_classes = [READERS]
    serializer_class = ApprovalSerializer
    filterset_class = selectors.ApprovalFilter

    def get_queryset(self):
        return roles.scope(selectors.approvals(), self.request.user, "entity__code")


class ApprovalDetailView(generics.RetrieveAPIView):
    permission_classes = [READERS]
    serializer_class = ApprovalSerializer

    def get_queryset(self):
        return roles.scope(selectors.approvals(), self.request.user, "entity__code")


class _ApprovalDecisionView(APIView):
    permission_classes = [DECIDERS]
    decide = None

    @extend_schema(request=CommentSerializer, responses={200: ApprovalSerializer})
    def post(self, request, pk):
        body = CommentSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        type(self).decide(approval_id=pk, user=request.user, comment=body.validated_data["comment"])
        return Response(ApprovalSerializer(selectors.approvals().get(pk=pk)).data)


class ApprovalApproveView(_ApprovalDecisionView):
    decide = staticmethod(services.approval_approve)


class ApprovalRejectView(_ApprovalDecisionView):
    decide = staticmethod(services.approval_reject)


class ExceptionListView(generics.ListAPIView):
    permission_classes = [READERS]
    serializer_class = ExceptionSerializer
    filterset_class = selectors.ExceptionFilter

    def get_queryset(self):
        # Scoped to the caller's entities: another entity's exceptions are not listed, and are 404 below.
        return selectors.visible_exceptions(self.request.user).prefetch_related("comments__author")


class ExceptionDetailView(generics.RetrieveAPIView):
    permission_classes = [READERS]
    serializer_class = ExceptionSerializer

    def get_queryset(self):
        return selectors.visible_exceptions(self.request.user).prefetch_related("comments__author")


def _exception_response(pk, status: int = 200) -> Response:
    exc = selectors.exceptions().prefetch_related("comments__author").get(pk=pk)
    return Response(ExceptionSerializer(exc).data, status=status)


class ExceptionAssignView(APIView):
    permission_classes = [WORKERS]

    @extend_schema(request=AssignSerializer, responses={200: ExceptionSerializer})
    def post(self, request, pk):
        body = AssignSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        owner = request.user
        if body.validated_data.get("owner"):
            owner = services.user_by_username(body.validated_data["owner"])
            if owner is None:
                raise ApiError("no such user", code=Codes.INVALID_REQUEST, status=422,
                               errors=[{"field": "owner", "message": "No such user."}])
        services.exception_assign(exception_id=pk, owner=owner, actor=request.user)
        return _exception_response(pk)


class ExceptionRetryView(APIView):
    permission_classes = [WORKERS]

    @extend_schema(request=None, responses={200: ExceptionSerializer})
    def post(self, request, pk):
        services.exception_retry(exception_id=pk, actor=request.user)
        return _exception_response(pk)


class ExceptionResolveView(APIView):
    permission_classes = [WORKERS]

    @extend_schema(request=ResolveSerializer, responses={200: ExceptionSerializer})
    def post(self, request, pk):
        body = ResolveSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        services.exception_resolve(exception_id=pk, resolution=body.validated_data["resolution"], actor=request.user)
        return _exception_response(pk)


class ExceptionCommentView(APIView):
    permission_classes = [WORKERS]

    @extend_schema(request=ExceptionCommentSerializer, responses={201: ExceptionSerializer})
    def post(self, request, pk):
        body = ExceptionCommentSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        services.exception_comment(exception_id=pk, body=body.validated_data["body"], actor=request.user)
        return _exception_response(pk, status=201)


class ExceptionEscalateView(APIView):
    permission_classes = [WORKERS]

    @extend_schema(request=EscalateSerializer, responses={200: ExceptionSerializer})
    def post(self, request, pk):
        body = EscalateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        services.exception_escalate(exception_id=pk, reason=body.validated_data["reason"], actor=request.user)
        return _exception_response(pk)


class ExceptionReplayView(APIView):
    permission_classes = [WORKERS]

    @extend_schema(request=None, responses={200: ExceptionSerializer})
    def post(self, request, pk):
        services.exception_replay(exception_id=pk, actor=request.user)
        return _exception_response(pk)


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
    lines = ManualLine(many=True, allow_empty=False, max_length=ledger_services.MANUAL_JOURNAL_MAX_LINES)


class ManualJournalView(APIView):
    permission_classes = [WORKERS]

    @extend_schema(operation_id="journals_manual_create", request=ManualJournalRequest, responses={
        201: OpenApiResponse(description='{"journal": <journal>, "approval": <approval> | null}'),
        422: OpenApiResponse(description="invalid_request | unknown_account | unbalanced_journal | period_closed"),
        404: OpenApiResponse(description="not_found (an entity outside the caller's)")})
    def post(self, request):
        body = ManualJournalRequest(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        entity = ledger_selectors.entity_for_code(data["entity"])
        if entity is None or not roles.may_see_entity(request.user, entity.code):
            raise NotFound(f"no entity {data['entity']}")
        journal = services.manual_journal_create(
            entity=entity, accounting_date=data["accounting_date"], description=data["description"],
            lines=[(ln["account"], ln["debit"], ln["credit"], ln["memo"]) for ln in data["lines"]],
            user=request.user, request_key=(request.headers.get("Idempotency-Key") or "").strip()[:200] or None)
        journal = ledger_selectors.journals().get(pk=journal.pk)
        approval = getattr(journal, "approval", None)  # the reverse one-to-one raises AttributeError when absent
        return Response({"journal": JournalSerializer(journal).data,
                         "approval": ApprovalSerializer(approval).data if approval else None}, status=201)
