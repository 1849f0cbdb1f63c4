"""Reconciliation API: `POST /api/v1/reconciliation/runs` `{"entity", "from", "to", "full"?}` starts a run and
answers 202 with it (a Celery task on queue `reconciliation` executes it after commit; 409
`reconciliation_running` while another run of the entity runs); `GET /api/v1/reconciliation/runs` and
`/runs/{id}` read runs; `GET /api/v1/reconciliation/breaks?entity=&code=&status=open|resolved` lists breaks
(paginated) and `/breaks/{id}` reads one. Actions on a break: `POST .../breaks/{id}/rerun` (202, the run for
its object), `/repost` (202: the journal sent again through the ledger's look-up-before-send, then a run),
`/adjust` (201: an adjusting manual journal, waiting for approval) and `/accept` `{"reason"}` (controllers and
admins: the difference is accepted). Reader roles read; finance ops, controllers and admins start runs and act;
everything is limited to the caller's entities (404 outside them)."""
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from billing_sync import selectors, services
from config import roles
from config.errors import NotFound
from exceptions_queue.selectors import approval_for_journal
from exceptions_queue.serializers import ApprovalSerializer
from ledger.selectors import entity_for_code

RUNNERS = roles.roles_allowed(*roles.WORKERS, read_roles=roles.READ_ALL)
READERS = roles.roles_allowed(*roles.READ_ALL)
WORKERS = roles.roles_allowed(*roles.WORKERS)
DECIDERS = roles.roles_allowed(*roles.DECIDERS)


class RunRequest(serializers.Serializer):
    entity = serializers.CharField(max_length=20)
    date_from = serializers.DateField()
    date_to = serializers.DateField()
    full = serializers.BooleanField(required=False, default=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The body says "from" and "to" (Python keywords): map them onto the fields.
        self.fields["from"] = self.fields.pop("date_from")
        self.fields["from"].source = "date_from"
        self.fields["to"] = self.fields.pop("date_to")
        self.fields["to"].source = "date_to"


class _Line(serializers.Serializer):
    account = serializers.CharField(max_length=30, allow_blank=True)
    debit = serializers.CharField(max_length=40, allow_blank=True, required=False, default="")
    credit = serializers.CharField(max_length=40, allow_blank=True, required=False, default="")
    memo = serializers.CharField(max_length=300, allow_blank=True, required=False, default="")


class AdjustRequest(serializers.Serializer):
    accounting_date = serializers.DateField()
    description = serializers.CharField(max_length=300)
    lines = _Line(many=True)


class AcceptRequest(serializers.Serializer):
    reason = serializers.CharField(max_length=2000, allow_blank=True)


def _entity(request, code: str):
    entity = entity_for_code(code)
    if entity is None or not roles.may_see_entity(request.user, code):
        raise NotFound(f"no entity {code}")
    return entity


def _key(request) -> str | None:
    return (request.headers.get("Idempotency-Key") or "").strip()[:200] or None


class RunCollectionView(generics.GenericAPIView):
    """GET: runs of the caller's entities, newest first (filter `entity`); POST: start one."""

    permission_classes = [RUNNERS]

    def get_queryset(self):
        runs = selectors.reconciliation_runs_for(self.request.user)
        entity = self.request.query_params.get("entity")
        return runs.filter(entity__code=entity) if entity else runs

    @extend_schema(operation_id="reconciliation_runs_list", responses={200: dict})
    def get(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response([selectors.reconciliation_run_resource(r) for r in page])

    @extend_schema(operation_id="reconciliation_runs_create", request=RunRequest, responses={
        202: OpenApiResponse(description="The run, `running`: a worker executes it"),
        409: OpenApiResponse(description="reconciliation_running: another run of the entity is running"),
        422: OpenApiResponse(description="invalid_request: the range ends before it starts")})
    def post(self, request):
        body = RunRequest(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        run = services.reconciliation_run_request(entity=_entity(request, data["entity"]), date_from=data["date_from"],
                                                  date_to=data["date_to"], full=data["full"], actor=request.user)
        run = selectors.reconciliation_runs_for(request.user).get(pk=run.pk)  # as the worker left it (eager tests)
        return Response(selectors.reconciliation_run_resource(run), status=202)


class RunDetailView(APIView):
    permission_classes = [READERS]

    @extend_schema(operation_id="reconciliation_runs_retrieve", responses={200: dict})
    def get(self, request, pk):
        run = selectors.reconciliation_runs_for(request.user).filter(pk=pk).first()
        if run is None:
            raise NotFound(f"no reconciliation run {pk}")
        return Response(selectors.reconciliation_run_resource(run))


class BreakListView(generics.GenericAPIView):
    """Breaks of the caller's entities, newest first; filters `entity`, `code`, `status` (open | resolved),
    `document`, `journal`, `run` (the last run that saw it)."""

    permission_classes = [READERS]
    filterset_class = selectors.ReconciliationBreakFilter

    def get_queryset(self):
        return selectors.reconciliation_breaks_for(self.request.user)

    @extend_schema(operation_id="reconciliation_breaks_list", responses={200: dict})
    def get(self, request):
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        return self.get_paginated_response([selectors.reconciliation_break_resource(b) for b in page])


def _break(request, pk):
    brk = selectors.reconciliation_breaks_for(request.user).filter(pk=pk).first()
    if brk is None:
        raise NotFound(f"no reconciliation break {pk}")
    return brk


class BreakDetailView(APIView):
    permission_classes = [READERS]

    @extend_schema(operation_id="reconciliation_breaks_retrieve", responses={200: dict})
    def get(self, request, pk):
        return Response(selectors.reconciliation_break_resource(_break(request, pk)))


def _run_answer(request, run, brk_pk) -> Response:
    run = selectors.reconciliation_runs_for(request.user).get(pk=run.pk)
    brk = _break(request, brk_pk)
    return Response({"run": selectors.reconciliation_run_resource(run),
                     "break": selectors.reconciliation_break_resource(brk)}, status=202)


_ACTION_ERRORS = {404: OpenApiResponse(description="not_found"),
                  409: OpenApiResponse(description="break_resolved | reconciliation_running | "
                                                   "break_action_not_applicable")}


class BreakRerunView(APIView):
    permission_classes = [WORKERS]

    @extend_schema(operation_id="reconciliation_breaks_rerun", request=None, responses={
        202: OpenApiResponse(description='{"run", "break"}: the run for the break\'s object'), **_ACTION_ERRORS})
    def post(self, request, pk):
        _break(request, pk)
        run = services.reconciliation_break_rerun(break_id=pk, actor=request.user)
        return _run_answer(request, run, pk)


class BreakRepostView(APIView):
    permission_classes = [WORKERS]

    @extend_schema(operation_id="reconciliation_breaks_repost", request=None, responses={
        202: OpenApiResponse(description='{"run", "break"}: the journal re-posted (or linked), and the run for it'),
        502: OpenApiResponse(description="posting_failed: the ERP did not take the journal"), **_ACTION_ERRORS})
    def post(self, request, pk):
        _break(request, pk)
        run = services.reconciliation_break_repost(break_id=pk, actor=request.user)
        return _run_answer(request, run, pk)


class BreakAdjustView(APIView):
    permission_classes = [WORKERS]

    @extend_schema(operation_id="reconciliation_breaks_adjust", request=AdjustRequest, responses={
        201: OpenApiResponse(description='{"journal": {"id", "status"}, "approval", "break"}'),
        422: OpenApiResponse(description="invalid_request | unbalanced_journal | unknown_account | period_closed"),
        **_ACTION_ERRORS})
    def post(self, request, pk):
        _break(request, pk)
        body = AdjustRequest(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        journal = services.reconciliation_break_adjust(
            break_id=pk, accounting_date=data["accounting_date"], description=data["description"],
            lines=[(ln["account"], ln["debit"], ln["credit"], ln["memo"]) for ln in data["lines"]],
            user=request.user, request_key=_key(request))
        approval = approval_for_journal(journal.pk)
        return Response({"journal": {"id": str(journal.pk), "status": journal.status},
                         "approval": ApprovalSerializer(approval).data if approval else None,
                         "break": selectors.reconciliation_break_resource(_break(request, pk))}, status=201)


class BreakAcceptView(APIView):
    permission_classes = [DECIDERS]

    @extend_schema(operation_id="reconciliation_breaks_accept", request=AcceptRequest, responses={
        200: OpenApiResponse(description="The break, resolved (accepted)"),
        422: OpenApiResponse(description="invalid_request: a reason is required"), **_ACTION_ERRORS})
    def post(self, request, pk):
        _break(request, pk)
        body = AcceptRequest(data=request.data)
        body.is_valid(raise_exception=True)
        services.reconciliation_break_accept(break_id=pk, reason=body.validated_data["reason"], user=request.user)
        return Response(selectors.reconciliation_break_resource(_break(request, pk)))

