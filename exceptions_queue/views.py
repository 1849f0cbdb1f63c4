"""Approvals and exceptions API. Views translate HTTP into service calls; services enforce the rules."""
from drf_spectacular.utils import extend_schema
from rest_framework import generics
from rest_framework.response import Response
from rest_framework.views import APIView

from config import roles
from config.errors import ApiError, Codes
from exceptions_queue import selectors, services
from exceptions_queue.serializers import (
    ApprovalSerializer, AssignSerializer, CommentSerializer, EscalateSerializer, ExceptionCommentSerializer,
    ExceptionSerializer, ResolveSerializer,
)

READERS = roles.roles_allowed(*roles.READ_ALL)
DECIDERS = roles.roles_allowed(roles.CONTROLLER, roles.ADMIN)
WORKERS = roles.roles_allowed(roles.FINANCE_OPS, roles.CONTROLLER, roles.ADMIN)


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
