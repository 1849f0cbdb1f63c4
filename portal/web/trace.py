"""Web pages of the audit trail: trace search and timelines (event, journal, invoice, ERP document reference)
via `portal.lineage`, entity-scoped (outside is 404, like something unknown, so other entities' ids cannot be
probed); and, for auditors and admins, evidence packs, digests and the public key.
`portal.evidence.export_evidence` (audited) writes the pack to a temporary file the response streams, never
all in memory; exporting is a CSRF POST, since it writes an audit entry."""
import datetime
import json
import re
import tempfile

from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import include, path, reverse

from audit import digests
from config import roles
from ledger import selectors as ledger_selectors
from portal import lineage
from portal.evidence import export_evidence
from portal.selectors import trace as trace_selectors
from portal.web.access import READERS, page
from portal.web.queue import _with_datetimes

EVIDENCE_ROLES = (roles.AUDITOR, roles.ADMIN)
SEARCH_LABEL = "Find by event id, journal id, invoice id or ERP document reference"
# One more key the lineage traces carry that the pages show as times.
_EXTRA_TIMES = {"history_date"}


# The page each kind of search result opens.
_TARGET_PAGES = {"event": "web-trace-event", "journal": "web-trace-journal", "exception": "web-exception-detail",
                 "erp": "web-trace-erp", "invoice": "web-trace-invoice"}


def _locate(user, query: str, entity: str) -> str | None:
    """Where the search text leads (a page URL), looking only inside the user's entities."""
    target = trace_selectors.locate(user, query, entity)
    return reverse(_TARGET_PAGES[target.kind], args=target.args) if target else None


@page(read=READERS)
def trace_search(request):
    query = (request.GET.get("q") or "").strip()
    entity = (request.GET.get("entity") or "").strip()
    entities = ledger_selectors.entity_codes_for(request.user)
    context = {"query": query, "entity": entity, "entities": entities, "label": SEARCH_LABEL, "not_found": False}
    if query:
        if entity and entity not in entities:
            entity = ""  # not one of theirs: search what they may see, never the other entity
        try:
            target = _locate(request.user, query, entity)
        except trace_selectors.Ambiguous as ambiguous:
            context["ambiguous"] = ambiguous.entities
            return render(request, "audit/search.html", context)
        if target:
            return redirect(target)
        context["not_found"] = True
        return render(request, "audit/search.html", context, status=404)
    return render(request, "audit/search.html", context)


def _trace_or_404(build, *args, user):
    try:
        return _with_datetimes(build(*args, user=user))
    except lineage.TraceNotFound as missing:
        raise Http404(str(missing)) from None


@page(read=READERS)
def trace_event(request, pk):
    trace = _trace_or_404(lineage.event_trace_for, pk, user=request.user)
    return render(request, "audit/trace_event.html", {"trace": trace, "title": f"Event {trace['event']['event_id']}"})


@page(read=READERS)
def trace_journal(request, pk):
    trace = _trace_or_404(lineage.journal_trace, pk, user=request.user)
    return render(request, "audit/trace_journal.html", {"trace": trace, "title": f"Journal {pk}"})


@page(read=READERS)
def trace_invoice(request, source_system, invoice_id):
    trace = _trace_or_404(lineage.invoice_trace, source_system, invoice_id, user=request.user)
    return render(request, "audit/trace_invoice.html", {"trace": trace, "title": f"Invoice {invoice_id}"})


@page(read=READERS)
def trace_erp(request, entity, ref):
    trace = _trace_or_404(lineage.erp_reference_trace, entity, ref, user=request.user)
    return render(request, "audit/trace_erp.html", {"trace": trace, "title": f"ERP document {ref}"})


# --------------------------------------------------------------------------------------------- evidence
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _evidence_form(request, entities):
    """The form's values and errors (field -> message); a period of UTC days, both ends included."""
    data = request.POST
    values = {"entity": data.get("entity", ""), "date_from": data.get("date_from", ""),
              "date_to": data.get("date_to", "")}
    errors, parsed = {}, {}
    if values["entity"] not in entities:
        errors["entity"] = "Choose one of your entities."
    for key in ("date_from", "date_to"):
        try:
            if not _DATE.match(values[key]):
                raise ValueError
            parsed[key] = datetime.date.fromisoformat(values[key])
        except ValueError:
            errors[key] = "Enter a date as YYYY-MM-DD."
    if not errors and parsed["date_to"] < parsed["date_from"]:
        errors["date_to"] = "The period ends before it starts."
    return values, errors, parsed


@page(read=EVIDENCE_ROLES, write=EVIDENCE_ROLES)
def evidence(request):
    entities = ledger_selectors.entity_codes_for(request.user)
    today = datetime.datetime.now(datetime.UTC).date()
    if request.method != "POST":
        values = {"entity": entities[0] if entities else "", "date_from": today.replace(day=1).isoformat(),
                  "date_to": today.isoformat()}
        return render(request, "audit/evidence.html", {"values": values, "errors": {}, "entities": entities})
    values, errors, parsed = _evidence_form(request, entities)
    if errors:
        return render(request, "audit/evidence.html", {"values": values, "errors": errors, "entities": entities},
                      status=400)
    filename = f"evidence-{values['entity']}-{parsed['date_from']}-{parsed['date_to']}.zip"
    # On disk, not in memory: a month of a busy entity is hundreds of megabytes. The file has no name
    # (deleted on close), and FileResponse closes it once the last chunk is sent.
    handle = tempfile.TemporaryFile(prefix="tieout-evidence-")
    try:
        export_evidence(entity_code=values["entity"], date_from=parsed["date_from"], date_to=parsed["date_to"],
                        out=handle, name=filename, actor=request.user)
        handle.seek(0)
    except BaseException:
        handle.close()
        raise
    return FileResponse(handle, as_attachment=True, filename=filename, content_type="application/zip")


@page(read=EVIDENCE_ROLES)
def evidence_digests(request):
    response = HttpResponse(json.dumps(digests.export(), indent=2), content_type="application/json")
    response["Content-Disposition"] = 'attachment; filename="tieout-audit-digests.json"'
    return response


@page(read=EVIDENCE_ROLES)
def evidence_public_key(request):
    response = HttpResponse(digests.public_key_pem(), content_type="application/x-pem-file")
    response["Content-Disposition"] = 'attachment; filename="tieout-audit-public-key.pem"'
    return response


trace_patterns = [
    path("", trace_search, name="web-trace"),
    path("event/<uuid:pk>/", trace_event, name="web-trace-event"),
    path("journal/<uuid:pk>/", trace_journal, name="web-trace-journal"),
    path("invoice/<str:source_system>/<str:invoice_id>/", trace_invoice, name="web-trace-invoice"),
    path("erp/<str:entity>/<path:ref>/", trace_erp, name="web-trace-erp"),
]
evidence_patterns = [
    path("", evidence, name="web-evidence"),
    path("digests.json", evidence_digests, name="web-evidence-digests"),
    path("public-key.pem", evidence_public_key, name="web-evidence-public-key"),
]
# Mounted at the site root by portal/urls.py.
urlpatterns = [path("trace/", include(trace_patterns)), path("evidence/", include(evidence_patterns))]
