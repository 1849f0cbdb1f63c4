"""Web pages of the exception queue: the list (filters, source-id search, bulk actions, keyset pages) and one
exception's page (actions, comment thread, full trace). Reads go through entity-scoped `selectors`, writes
through the services the API calls (audited once, refused the same way). Every action is a CSRF POST answering
with a redirect (POST-redirect-GET) and a message naming the stable error code on failure; `@page` refuses
readers' POSTs (auditors change nothing)."""
import datetime
import json

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.db.models import Q
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.utils.dateparse import parse_datetime
from django.utils.http import url_has_allowed_host_and_scheme

from billing_sync import selectors as billing_selectors
from config import roles
from config.errors import TieoutError
from exceptions_queue import selectors, services, sla
from exceptions_queue.selectors import ExceptionProcess, ExceptionStatus
from config.money import display
from ledger import selectors as ledger_selectors
from portal import lineage
from portal.web import reconciliation as recon_web
from portal.web.access import READERS, WORKERS, page

FILTER_FIELDS = ("code", "process", "entity", "owner", "status", "age", "q", "escalated")
STATUS_CHOICES = [("unresolved", "Unresolved"), ("open", "Open"), ("assigned", "Assigned"),
                  ("resolved", "Resolved"), ("all", "All")]
AGE_CHOICES = [(name, name) for name in sla.BUCKETS]


# --------------------------------------------------------------------------------------------- helpers
def _workers(entity_code: str = ""):
    """People who may own exceptions (of `entity_code`, when given), for the assign selects."""
    users = (get_user_model().objects.filter(is_active=True)
             .filter(Q(groups__name__in=WORKERS) | Q(is_superuser=True)).distinct().order_by("username"))
    if entity_code:
        return [u for u in users if roles.may_see_entity(u, entity_code)]
    return list(users)


def _amount(exc, currencies) -> str:
    if exc.amount is None:
        return ""
    currency = currencies.get(exc.entity_code)
    # For the pages only (grouped thousands, the currency's digits): exports and the API keep plain digits.
    return f"{display(exc.amount, currency)} {currency}" if currency else display(exc.amount.normalize())


def _safe_next(request, fallback: str) -> str:
    target = request.POST.get("next") or ""
    if target.startswith("/exceptions/") and url_has_allowed_host_and_scheme(
            target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return target
    return fallback


def _error(request, error: TieoutError) -> None:
    messages.error(request, f"{error.code}: {error.detail}")


# --------------------------------------------------------------------------------------------- the list
@page(read=READERS, write=WORKERS)
def queue_list(request):
    params = request.GET.copy()
    if not params.get("status"):
        params["status"] = "unresolved"  # the work still to do, unless asked otherwise
    filter_data = {k: v for k, v in params.items() if k in FILTER_FIELDS and v and not (k == "status" and v == "all")}
    visible = selectors.visible_exceptions(request.user)
    filterset = selectors.ExceptionFilter(filter_data, queryset=visible, request=request)
    queryset = filterset.qs if filterset.is_valid() else visible.none()
    result = selectors.queue_page(queryset, after=params.get("after", ""), before=params.get("before", ""))
    currencies = ledger_selectors.entity_currencies()
    now = datetime.datetime.now(datetime.timezone.utc)
    rows = [{"exc": exc, "age": sla.age_of(exc, now), "amount": _amount(exc, currencies),
             "resolved": exc.status == ExceptionStatus.RESOLVED} for exc in result.rows]
    base = params.copy()
    for key in ("after", "before"):
        base.pop(key, None)

    def link(**cursor):
        query = base.copy()
        for key, value in cursor.items():
            query[key] = value
        return f"?{query.urlencode()}"

    return render(request, "exceptions/list.html", {
        "rows": rows, "params": params, "filtered": any(request.GET.get(k) for k in FILTER_FIELDS),
        "codes": sorted(sla.SLA_HOURS), "processes": ExceptionProcess.choices,
        "entities": ledger_selectors.entity_codes_for(request.user), "statuses": STATUS_CHOICES, "ages": AGE_CHOICES,
        "workers": _workers(), "here": request.get_full_path(),
        "next_link": link(after=result.next_cursor) if result.next_cursor else None,
        "prev_link": link(before=result.prev_cursor) if result.prev_cursor else None,
    })


@page(read=READERS, write=WORKERS)
def queue_bulk(request):
    back = _safe_next(request, reverse("web-exception-list"))
    if request.method != "POST":
        return redirect(back)
    ids = request.POST.getlist("ids")
    action = request.POST.get("action", "")
    if not ids:
        messages.error(request, "invalid_request: select at least one exception")
        return redirect(back)
    if action in ("assign_me", "assign"):
        owner = request.user
        if action == "assign":
            owner = services.user_by_username(request.POST.get("owner", ""))
            if owner is None:
                messages.error(request, "invalid_request: choose whom to assign the selected exceptions to")
                return redirect(back)
        outcomes = services.exceptions_assign_bulk(exception_ids=ids, owner=owner, actor=request.user)
        verb = f"Assigned to {owner.get_username()}"
    elif action == "retry":
        outcomes = services.exceptions_retry_bulk(exception_ids=ids, actor=request.user)
        verb = "Retried"
    else:
        messages.error(request, "invalid_request: unknown bulk action")
        return redirect(back)
    done = [o for o in outcomes if o["ok"]]
    failed = [o for o in outcomes if not o["ok"]]
    if done:
        messages.success(request, f"{verb}: {len(done)} of {len(outcomes)}.")
    for outcome in failed:
        messages.error(request, f"{outcome['id'][:8]}: {outcome['code']}: {outcome['detail']}")
    return redirect(back)


# --------------------------------------------------------------------------------------------- one exception
TIME_KEYS = {"at", "received_at", "created_at", "resolved_at", "finished_at", "posted_at", "delivered_at"}


def _with_datetimes(value):
    """The trace's RFC 3339 strings as datetimes, so the page formats them one way."""
    if isinstance(value, dict):
        return {k: (parse_datetime(v) or v) if k in TIME_KEYS and isinstance(v, str) else _with_datetimes(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_with_datetimes(item) for item in value]
    return value


def _run(request, exc, action: str) -> None:
    """One action from the detail page: call its service and say how it went."""
    post = request.POST
    pk, user = exc.pk, request.user
    if action == "assign_me":
        services.exception_assign(exception_id=pk, owner=user, actor=user)
        messages.success(request, "Assigned to you.")
    elif action == "assign":
        owner = services.user_by_username(post.get("owner", ""))
        if owner is None:
            messages.error(request, "invalid_request: choose whom to assign the exception to")
            return
        services.exception_assign(exception_id=pk, owner=owner, actor=user)
        messages.success(request, f"Assigned to {owner.get_username()}.")
    elif action == "retry":
        services.exception_retry(exception_id=pk, actor=user)
        # Committed: follow-ups (a re-sent journal's posting) have run or are queued; say where it stands now.
        after = selectors.exception_get(pk)
        if after.status == ExceptionStatus.RESOLVED:
            messages.success(request, "Retried: the exception is resolved.")
        elif after.process == ExceptionProcess.POSTING:
            messages.info(request, "Retried: the failed journals were sent to the ERP again.")
        else:
            messages.warning(request, f"Retried; still {after.status}: {after.code}: {after.message}")
    elif action == "replay":
        services.exception_replay(exception_id=pk, actor=user)
        after = selectors.exception_get(pk)
        if after.status == ExceptionStatus.RESOLVED:
            messages.success(request, "Replayed from the stored payload: the exception is resolved.")
        else:
            messages.warning(request, f"Replayed; still {after.status}: {after.code}: {after.message}")
    elif action == "resolve":
        services.exception_resolve(exception_id=pk, resolution=post.get("resolution", ""), actor=user)
        messages.success(request, "Resolved.")
    elif action == "comment":
        services.exception_comment(exception_id=pk, body=post.get("body", ""), actor=user)
        messages.success(request, "Comment added.")
    elif action == "escalate":
        after = services.exception_escalate(exception_id=pk, reason=post.get("reason", ""), actor=user)
        messages.success(request, f"Escalated to level {after.escalation_level}.")
    else:
        messages.error(request, "invalid_request: unknown action")


@page(read=READERS, write=WORKERS)
def exception_detail(request, pk):
    exc = selectors.visible_exception(request.user, pk)
    if exc is None:
        raise Http404("no such exception")
    if request.method == "POST":
        action = request.POST.get("action", "")
        if action == "break_accept" and not recon_web.may_accept(request.user):
            return recon_web.refuse_accept(request)
        try:
            if action.startswith("break_") and exc.process == ExceptionProcess.RECONCILIATION:
                recon_web.break_action(request, exc, action)
            else:
                _run(request, exc, action)
        except TieoutError as error:
            _error(request, error)
        return redirect(_safe_next(request, reverse("web-exception-detail", args=[exc.pk])))

    trace = _with_datetimes(lineage.exception_trace(exc.pk))
    payload = None
    if exc.event_id:
        payload = json.dumps(billing_selectors.event_payload(exc.event_id), indent=2, sort_keys=True,
                             ensure_ascii=False)
    resolved = exc.status == ExceptionStatus.RESOLVED
    return render(request, "exceptions/detail.html", {
        "exc": exc, "age": sla.age_of(exc), "amount": _amount(exc, ledger_selectors.entity_currencies()), "resolved": resolved,
        "comments": selectors.exception_comments(exc), "trace": trace, "payload": payload,
        "workers": _workers(exc.entity_code) if not resolved else [],
        "replay_refusal": services.exception_replay_refusal(exc),
        "breaks": (recon_web.exception_breaks(request.user, exc.pk)
                   if exc.process == ExceptionProcess.RECONCILIATION else []),
        "may_accept": recon_web.may_accept(request.user),
    })


urlpatterns = [
    path("", queue_list, name="web-exception-list"),
    path("bulk", queue_bulk, name="web-exception-bulk"),
    path("<uuid:pk>/", exception_detail, name="web-exception-detail"),
]
