"""Ledger API: trial balance, journals, period close/reopen. Views translate HTTP; services decide."""
import datetime

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics
from rest_framework.response import Response
from rest_framework.views import APIView

from config import roles
from config.errors import ApiError, Codes, NotFound
from ledger import selectors, services
from ledger.models import Entity, Period
from ledger.serializers import JournalSerializer, trial_balance_body

READERS = roles.roles_allowed(*roles.READ_ALL)


class TrialBalanceView(APIView):
    permission_classes = [READERS]

    @extend_schema(parameters=[OpenApiParameter("entity", str, required=True), OpenApiParameter("as_of", str)],
                   responses={200: dict})
    def get(self, request):
        code = request.query_params.get("entity")
        if not code:
            raise ApiError("entity is required", code=Codes.INVALID_REQUEST, status=400,
                           errors=[{"field": "entity", "message": "This field is required."}])
        entity = Entity.objects.filter(code=code).first()
        if entity is None or not roles.may_see_entity(request.user, code):
            raise NotFound(f"no entity {code}")
        as_of = None
        if request.query_params.get("as_of"):
            try:
                as_of = datetime.date.fromisoformat(request.query_params["as_of"])
            except ValueError:
                raise ApiError("as_of must be YYYY-MM-DD", code=Codes.INVALID_REQUEST, status=400) from None
        return Response(trial_balance_body(selectors.trial_balance(entity=entity, as_of=as_of)))


class JournalListView(generics.ListAPIView):
    permission_classes = [READERS]
    serializer_class = JournalSerializer
    filterset_class = selectors.JournalFilter

    def get_queryset(self):
        return roles.scope(selectors.journals(), self.request.user, "entity__code")


class JournalDetailView(generics.RetrieveAPIView):
    permission_classes = [READERS]
    serializer_class = JournalSerializer

    def get_queryset(self):
        return roles.scope(selectors.journals(), self.request.user, "entity__code")


class PeriodStatusView(APIView):
    """POST /api/v1/periods/{entity}/{YYYY-MM}/close or /reopen (controllers and admins)."""

    permission_classes = [roles.roles_allowed(roles.CONTROLLER, roles.ADMIN)]
    action = Period.Status.CLOSED

    @extend_schema(request=None, responses={200: dict})
    def post(self, request, entity: str, period: str):
        entity_obj = get_object_or_404(Entity, code=entity)
        if not roles.may_see_entity(request.user, entity):
            raise NotFound(f"no entity {entity}")
        try:
            year, month = (int(part) for part in period.split("-"))
            datetime.date(year, month, 1)
        except ValueError:
            raise ApiError("period must be YYYY-MM", code=Codes.INVALID_REQUEST, status=400) from None
        result = services.period_set_status(entity=entity_obj, year=year, month=month, status=self.action,
                                            actor=request.user)
        return Response({"entity": entity_obj.code, "period": f"{year}-{month:02d}", "status": result.status,
                         "closed_at": result.closed_at, "closed_by": result.closed_by or None})
