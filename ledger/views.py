"""Ledger API: trial balance and journals. Views translate HTTP; services decide. (Closing and reopening a
period need the close checks, which read every layer: the portal's API, portal/api_views.py.)"""
import datetime

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics
from rest_framework.response import Response
from rest_framework.views import APIView

from config import roles
from config.errors import ApiError, Codes, NotFound
from ledger import selectors
from ledger.models import Entity
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
