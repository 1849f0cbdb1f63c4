"""Web pages of reconciliation: `/reconciliation/` lists the recent runs and the breaks (filters entity, code,
status; each break leads to its exception) with a form to start a run (finance ops, controllers, admins: the run
executes on the Celery queue `reconciliation` after commit), and the "Reconciliation break" panel of a
`reconciliation` exception's page with its actions (re-run, re-post, adjusting journal, accept). Reads go through
`billing_sync.selectors` (entity-scoped), writes through `billing_sync.services` (which decide again); every
action is a CSRF POST answered by a redirect and a message naming the stable error code on failure."""
from django.contrib import messages
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.utils import timezone
from django.utils.dateparse import parse_date

from billing_sync import selectors as billing_selectors
from billing_sync import services as billing_services
from config import roles
from config.errors import TieoutError
from ledger import selectors as ledger_selectors
from portal.web.access import DECIDERS, READERS, WORKERS, page, refuse

RUNS_SHOWN = 20
BREAKS_SHOWN = 100
REPOSTABLE = ("missing_in_erp", "erp_document_cancelled")
BREAK_STATUSES = [("open", "Open"), ("resolved", "Resolved"), ("all", "All")]


# --------------------------------------------------------------------------------------------- the break panel
def _text(value) -> str:
    """A JSON value of a break's side as one readable string (nested objects as `key: value` lists)."""
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_text(v)}" for k, v in sorted(value.items()))
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value)
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _sides(brk) -> list[dict]:
    """The expected and actual values side by side, one row per key either side names."""
    expected, actual = brk.expected or {}, brk.actual or {}
    keys = sorted(set(expected) | set(actual))
    return [{"key": k, "expected": _text(expected[k]) if k in expected else "",
             "actual": _text(actual[k]) if k in actual else "",
             "differs": expected.get(k) != actual.get(k)} for k in keys]


def _document_link(document: str) -> str | None:
    """The trace page of a break's canonical document (`invoice:<source_system>:<id>`), when there is one."""
    kind, _, rest = document.partition(":")
    source_system, _, document_id = rest.partition(":")
    if kind == "invoice" and source_system and document_id:
        return reverse("web-trace-invoice", args=[source_system, document_id])
    return None


def exception_breaks(user, exception_id) -> list[dict]:
    """The breaks linked to a `reconciliation` exception, as the exception page shows them (with the accounts an
    adjusting journal may use, per break's entity)."""
    breaks = (billing_selectors.reconciliation_breaks_for(user).filter(exception_id=exception_id)
              .select_related("opened_by_run", "last_seen_run", "resolved_by_run", "adjusting_journal"))
    rows = []
    for brk in breaks:
        rows.append({
            "b": brk, "sides": _sides(brk), "document_link": _document_link(brk.document) if brk.document else None,
            "repostable": brk.code in REPOSTABLE and brk.journal_id is not None,
            "accounts": [(a.code, f"{a.code} {a.name}") for a in ledger_selectors.accounts_active(brk.entity)],
            "today": timezone.localdate().isoformat(),
        })
    return rows


def break_action(request, exc, action: str) -> None:
    """One break action from the exception page (`break_rerun`, `break_repost`, `break_adjust`, `break_accept`),
    on a break linked to `exc`; raises TieoutError as the services refuse."""
    post, user = request.POST, request.user
    break_id = (post.get("break") or "").strip()
    brk = (billing_selectors.reconciliation_breaks_for(user).filter(exception_id=exc.pk, pk=break_id).first()
           if break_id.isdigit() else None)
    if brk is None:
        messages.error(request, "not_found: no such reconciliation break on this exception")
        return
    if action == "break_rerun":
        run = billing_services.reconciliation_break_rerun(break_id=brk.pk, actor=user)
        messages.success(request, _after_run(user, run, brk.pk, "Re-run"))
    elif action == "break_repost":
        run = billing_services.reconciliation_break_repost(break_id=brk.pk, actor=user)
        messages.success(request, _after_run(user, run, brk.pk, "Re-posted to the ERP; run"))
    elif action == "break_adjust":
        _adjust(request, brk)
    elif action == "break_accept":
        billing_services.reconciliation_break_accept(break_id=brk.pk, reason=post.get("reason", ""), user=user)
        messages.success(request, f"Break {brk.pk} accepted: the difference stands, with your reason.")


def _after_run(user, run, break_id, what: str) -> str:
    """Say where the run (executed after commit, or queued) left the break."""
    run = billing_selectors.reconciliation_runs_for(user).filter(pk=run.pk).first() or run
    brk = billing_selectors.reconciliation_breaks_for(user).filter(pk=break_id).first()
    if run.status == "running":
        return f"{what} {run.pk} started; it runs on the reconciliation queue."
    if brk is not None and brk.status == "resolved":
        return f"{what} {run.pk} {run.status}: the break is resolved."
    if run.status == "failed":
        return f"{what} {run.pk} failed: {run.error}"
    return f"{what} {run.pk} {run.status}: the break is still open."


def _adjust(request, brk) -> None:
    post = request.POST
    debit, credit = (post.get("debit_account") or "").strip(), (post.get("credit_account") or "").strip()
    amount, memo = (post.get("amount") or "").strip(), (post.get("memo") or "").strip()
    date = parse_date((post.get("accounting_date") or "").strip())
    missing = [name for name, value in (("debit account", debit), ("credit account", credit), ("amount", amount),
                                        ("date", date), ("memo", memo)) if not value]
    if missing:
        messages.error(request, f"invalid_request: the adjusting journal needs {', '.join(missing)}")
        return
    journal = billing_services.reconciliation_break_adjust(
        break_id=brk.pk, accounting_date=date, description=memo, user=request.user,
        lines=[(debit, amount, "", memo), (credit, "", amount, memo)])
    messages.success(request, f"Adjusting journal {journal.pk} raised ({journal.status}); it waits for approval "
                              "where the entity's policy asks for it.")


def may_accept(user) -> bool:
    return roles.has_role(user, *DECIDERS)


# --------------------------------------------------------------------------------------------- the page
def _run_rows(runs) -> list[dict]:
    return [{"r": r, "breaks": sorted((r.breaks or {}).items()), "break_total": sum((r.breaks or {}).values())}
            for r in runs]


@page(read=READERS)
def reconciliation_index(request):
    user = request.user
    entity_codes = ledger_selectors.entity_codes_for(user)
    params = {k: (request.GET.get(k) or "").strip() for k in ("entity", "code", "status")}
    params["status"] = params["status"] or "open"
    runs = billing_selectors.reconciliation_runs_for(user)
    if params["entity"]:
        runs = runs.filter(entity__code=params["entity"])
    filter_data = {k: v for k, v in params.items() if v and not (k == "status" and v == "all")}
    visible = billing_selectors.reconciliation_breaks_for(user)
    filterset = billing_selectors.ReconciliationBreakFilter(filter_data, queryset=visible)
    breaks = filterset.qs if filterset.is_valid() else visible.none()
    total = breaks.count()
    today = timezone.localdate()
    return render(request, "reconciliation/index.html", {
        "runs": _run_rows(runs[:RUNS_SHOWN]), "breaks": list(breaks[:BREAKS_SHOWN]), "break_total": total,
        "shown": BREAKS_SHOWN, "params": params, "entities": entity_codes, "statuses": BREAK_STATUSES,
        "codes": [c for c, _ in billing_selectors.ReconciliationBreakFilter.base_filters["code"].extra["choices"]],
        "default_from": today.replace(day=1).isoformat(), "default_to": today.isoformat(),
    })


@page(read=WORKERS, write=WORKERS)
def run_start(request):
    back = reverse("web-reconciliation")
    if request.method != "POST":
        return redirect(back)
    post = request.POST
    code = (post.get("entity") or "").strip()
    entity = ledger_selectors.entities_for(request.user).filter(code=code).first() if code else None
    date_from, date_to = parse_date(post.get("from") or ""), parse_date(post.get("to") or "")
    if entity is None:
        messages.error(request, "invalid_request: choose one of your entities")
        return redirect(back)
    if date_from is None or date_to is None:
        messages.error(request, "invalid_request: give the range as two dates (YYYY-MM-DD)")
        return redirect(back)
    try:
        run = billing_services.reconciliation_run_request(entity=entity, date_from=date_from, date_to=date_to,
                                                          full=bool(post.get("full")), actor=request.user)
    except TieoutError as error:
        messages.error(request, f"{error.code}: {error.detail}")
        return redirect(back)
    run = billing_selectors.reconciliation_runs_for(request.user).filter(pk=run.pk).first() or run
    kind = "Full run" if run.full else "Run"
    if run.status == "running":
        messages.success(request, f"{kind} {run.pk} of {entity.code} started; it runs on the reconciliation queue.")
    elif run.status == "finished":
        found = sum((run.breaks or {}).values())
        messages.success(request, f"{kind} {run.pk} of {entity.code} finished: {run.matched} matched, {found} "
                                  f"break{'s' if found != 1 else ''}, {run.resolved} resolved.")
    else:
        messages.error(request, f"reconciliation_failed: run {run.pk} of {entity.code} failed: {run.error}")
    return redirect(f"{back}?entity={entity.code}")


def refuse_accept(request):
    return refuse(request, "Only controllers and admins accept a reconciliation difference.")


urlpatterns = [
    path("", reconciliation_index, name="web-reconciliation"),
    path("runs", run_start, name="web-reconciliation-run"),
]
