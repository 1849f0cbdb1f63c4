"""Web pages of the period close: `/close/` lists each entity's months (the current one and the six before it)
with their status and live close checks, `/close/<entity>/<YYYY-MM>/` shows one month's checks with the link
to what fails and the first failing objects, its close record, and the actions: close (every check passes),
ask a second controller to close anyway (with a reason) or to reopen. Every reader role may read; controllers
and admins act, and `portal.services.close` decides again (stable codes, re-rendered with their status)."""
from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import path, reverse

from config.errors import ApiError
from ledger import selectors as ledger_selectors
from portal import services
from portal.selectors import close as selectors
from portal.web.access import DECIDERS, READERS, page

MAX_REASON = 2000


def _entity_or_404(request, code: str):
    entity = ledger_selectors.entities_for(request.user).filter(code=code).first()
    if entity is None:
        raise Http404("No such entity.")
    return entity


def _month_or_404(text: str) -> tuple[int, int]:
    month = selectors.parse_month(text)
    if month is None:
        raise Http404("No such month.")
    return month


@page(read=READERS)
def close_index(request):
    entities = list(ledger_selectors.entities_for(request.user))
    chosen = (request.GET.get("entity") or "").strip()
    shown = [e for e in entities if e.code == chosen] if chosen else entities
    months = selectors.default_months()
    return render(request, "close/index.html", {
        "entities": [{"entity": e, "rows": selectors.overview(e, months)} for e in shown],
        "entity_choices": [e.code for e in entities], "chosen": chosen, "columns": [selectors.SHORT[c] for c, _ in selectors.CHECKS],
    })


def _render_month(request, entity, year: int, month: int, *, error=None, reason: str = "", status: int = 200):
    result = selectors.checks(entity, year, month, items=True)
    body = selectors.period_resource(entity, year, month, result=result)
    context = {
        "entity": entity, "year": year, "month": month, "label": body["period"], "p": body, "checks": result,
        "failing": [c for c in result if not c["ok"]], "closable": selectors.closable(result),
        "recorded": body["close_checks"], "error": error, "reason": reason, "max_reason": MAX_REASON,
        "pending_close": next((a for a in body["pending"] if a["kind"] == "period_close"), None),
        "pending_reopen": next((a for a in body["pending"] if a["kind"] == "period_reopen"), None),
    }
    return render(request, "close/month.html", context, status=status)


@page(read=READERS)
def close_month(request, entity: str, period: str):
    entity_obj = _entity_or_404(request, entity)
    year, month = _month_or_404(period)
    return _render_month(request, entity_obj, year, month)


def _act(request, entity: str, period: str, act):
    entity_obj = _entity_or_404(request, entity)
    year, month = _month_or_404(period)
    here = reverse("web-close-month", args=[entity_obj.code, f"{year}-{month:02d}"])
    if request.method != "POST":
        return redirect(here)
    reason = (request.POST.get("reason") or "").strip()
    try:
        message = act(entity_obj, year, month, reason)
    except ApiError as exc:
        return _render_month(request, entity_obj, year, month, error={"code": exc.code, "detail": exc.detail,
                                                                       "errors": exc.errors or []},
                             reason=reason, status=exc.status)
    messages.success(request, message)
    return redirect(here)


@page(read=DECIDERS, write=DECIDERS)
def close_action(request, entity: str, period: str):
    def act(entity_obj, year, month, reason):
        outcome = services.period_close(entity=entity_obj, year=year, month=month, actor=request.user, reason=reason)
        if outcome.status == "closed":
            return f"{entity_obj.code} {year}-{month:02d} is closed; nothing more is posted into it."
        return (f"Closing {entity_obj.code} {year}-{month:02d} with failing checks is asked for: another controller "
                "must approve it.")
    return _act(request, entity, period, act)


@page(read=DECIDERS, write=DECIDERS)
def reopen_action(request, entity: str, period: str):
    def act(entity_obj, year, month, reason):
        services.period_reopen_request(entity=entity_obj, year=year, month=month, user=request.user, reason=reason)
        return f"Reopening {entity_obj.code} {year}-{month:02d} is asked for: another controller must approve it."
    return _act(request, entity, period, act)


urlpatterns = [
    path("", close_index, name="web-close"),
    path("<str:entity>/<str:period>/", close_month, name="web-close-month"),
    path("<str:entity>/<str:period>/close", close_action, name="web-close-close"),
    path("<str:entity>/<str:period>/reopen", reopen_action, name="web-close-reopen"),
]
