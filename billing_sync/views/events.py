"""Events API: receive one or a batch, list, read; canonical invoices. Views only translate HTTP; the receive
views read the raw body themselves (never `request.data`) so the exact bytes are kept in the receipt log, and
record a receipt for refused requests too (401/403). An event whose month retention archived answers 410
`archived` with the pack that holds it (`event_or_gone`), here and at the portal's trace."""
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions as drf_exceptions
from rest_framework import generics
from rest_framework.response import Response
from rest_framework.views import APIView

from billing_sync import selectors, services
from billing_sync.models import ApiToken, Event, Receipt
from config import roles
from config.api import PROBLEM_CONTENT_TYPE, problem_response
from config.errors import Codes, NotFound

SENDERS = roles.roles_allowed(roles.INTEGRATION, roles.ADMIN, read_roles=(roles.INTEGRATION, *roles.READ_ALL))
EVENT_READERS = roles.roles_allowed(roles.INTEGRATION, *roles.READ_ALL)


def _own_only(user) -> bool:
    """Source systems read only what they sent; every other role reads everything."""
    return not roles.has_role(user, *roles.READ_ALL)


class _ReceiveView(generics.GenericAPIView):
    permission_classes = [SENDERS]
    endpoint = "single"
    parser_classes = []  # we read the raw body ourselves

    def handle_exception(self, exc):
        outcome = None
        if isinstance(exc, (drf_exceptions.NotAuthenticated, drf_exceptions.AuthenticationFailed)):
            outcome, status = Receipt.Outcome.UNAUTHORIZED, 401
        elif isinstance(exc, drf_exceptions.PermissionDenied):
            outcome, status = Receipt.Outcome.FORBIDDEN, 403
        if outcome and self.request.method == "POST":
            user = getattr(self.request, "_user", None)
            code = getattr(exc, "problem_code", None)  # token_expired: worth telling apart in the receipt
            try:
                body = self.request.body
            except RequestDataTooBig:  # too large to keep: the receipt records the refusal without it
                body = b""
            services.receipt_reject(body=body, endpoint=self.endpoint, user=user,
                                    headers=self.request.headers, remote_addr=self.request.META.get("REMOTE_ADDR"),
                                    status=status, outcome=outcome, detail={"code": code} if code else None)
        return super().handle_exception(exc)

    def allowed(self):
        """The token's binding as a predicate on an event envelope, or None for an unbound token/session."""
        token = self.request.auth
        if isinstance(token, ApiToken) and token.is_bound:
            return lambda payload: token.allows(payload["source_system"], payload["entity"])
        return None

    def respond(self, answer: services.Answer):
        if answer.raw is not None:
            response = HttpResponse(answer.raw, status=answer.status, content_type="application/json")
            for name, value in answer.headers.items():
                response[name] = value
            return response
        content_type = PROBLEM_CONTENT_TYPE if answer.status >= 400 else None
        return Response(answer.body, status=answer.status, headers=answer.headers, content_type=content_type)


class EventCollectionView(_ReceiveView):
    """GET lists events (filters: source_system, event_id, status, type, entity); POST receives one."""

    filterset_class = selectors.EventFilter

    def get_queryset(self):
        return selectors.events_visible_to(self.request.user, own_only=_own_only(self.request.user))

    @extend_schema(operation_id="events_list", responses={200: dict})
    def get(self, request, *args, **kwargs):
        queryset = self.filter_queryset(self.get_queryset())
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(selectors.event_resources(page))

    @extend_schema(request={"application/json": dict}, responses={
        202: OpenApiResponse(description="Accepted: the event resource"),
        200: OpenApiResponse(description="Replay (Idempotent-Replayed: true), the first answer's body"),
        403: OpenApiResponse(description="source_not_allowed (outside the token's binding), permission_denied"),
        409: OpenApiResponse(description="idempotency_conflict"), 422: OpenApiResponse(description="invalid_event")})
    def post(self, request):
        return self.respond(services.event_receive(body=request.body, user=request.user, headers=request.headers,
                                                   remote_addr=request.META.get("REMOTE_ADDR"), allowed=self.allowed()))


class EventBatchView(_ReceiveView):
    endpoint = "batch"

    @extend_schema(request={"application/json": dict}, responses={200: OpenApiResponse(
        description='{"results": [{"status": 202|200|403|409|422, "headers"?: {...}, "body": {...}}]} in request '
                    "order (403: source_not_allowed, outside the token's binding)")})
    def post(self, request):
        return self.respond(services.event_batch_receive(body=request.body, user=request.user, headers=request.headers,
                                                   remote_addr=request.META.get("REMOTE_ADDR"), allowed=self.allowed()))


def event_for(request, pk) -> Event:
    """The event `pk` if the caller may read it (a source system: only its own), else 404 (the portal's
    event trace asks the same)."""
    event = selectors.events_visible_to(request.user, own_only=_own_only(request.user)).filter(pk=pk).first()
    if event is None:
        raise NotFound(f"no event {pk}")
    return event


ARCHIVED_RESPONSE = OpenApiResponse(description="archived: the event's month was archived by retention; `event` "
                                   "is its identity, `archive` the signed pack that holds its bytes (pack, location, "
                                   "sha256, month, partition, rows, archived_at)")


def event_or_gone(request, pk) -> tuple[Event | None, Response | None]:
    """(the event, None) if the caller may read it; (None, a 410 `archived` answer naming the pack) if its
    month was archived by retention; else 404. Source systems read only what they sent, which an archived
    event no longer tells (its row is gone): 404 for them."""
    try:
        return event_for(request, pk), None
    except NotFound:
        archived = selectors.event_archive(pk) if not _own_only(request.user) else None
        if archived is None:
            raise
    gone = problem_response(410, Codes.ARCHIVED, "Archived", f"event {pk} was archived with its month "
                            f"{archived['archive']['month']} into {archived['archive']['pack']}")
    gone.data.update(archived)
    return None, gone


class EventDetailView(APIView):
    permission_classes = [EVENT_READERS]

    @extend_schema(responses={200: dict, 410: ARCHIVED_RESPONSE})
    def get(self, request, pk):
        event, gone = event_or_gone(request, pk)
        return gone or Response(selectors.event_resources([event])[0])


class InvoiceDetailView(APIView):
    permission_classes = [roles.roles_allowed(*roles.READ_ALL)]

    @extend_schema(responses={200: dict})
    def get(self, request, source_system, invoice_id):
        invoice = selectors.invoice_by_identity(source_system, invoice_id)
        if invoice is None or not roles.may_see_entity(request.user, invoice.entity.code):
            raise NotFound(f"no invoice {source_system}/{invoice_id}")
        return Response(selectors.invoice_resource(invoice))


class EventCallbacksView(generics.GenericAPIView):
    """Status callbacks sent (or being sent) to the event's source system; who may read the event may read them."""

    permission_classes = [EVENT_READERS]
    filterset_class = selectors.CallbackDeliveryFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # OpenAPI generation: no request, no event
            return selectors.callback_deliveries_for_event(None).none()
        return selectors.callback_deliveries_for_event(event_for(self.request, self.kwargs["pk"]).pk)

    @extend_schema(operation_id="event_callbacks_list", responses={200: dict})
    def get(self, request, pk):
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        return self.get_paginated_response([selectors.callback_delivery_resource(d) for d in page])
