"""Web pages: the approvals inbox and one approval with all needed to decide it, approve and reject. Every
reader role may open them within their entities; only controllers and admins decide. Buttons show only to who
may use them, but `exceptions_queue.services` (as for the API) decides, refusing forged POSTs with stable
codes (`segregation_of_duties` 403, `already_decided` 409). Success redirects back (POST-redirect-GET); a
refusal re-renders with code and status."""
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import path, reverse

from config.errors import ApiError
from exceptions_queue import services
from exceptions_queue.selectors import ApprovalStatus
from ledger import selectors as ledger_selectors
from portal.selectors import approvals as selectors
from portal.web.access import DECIDERS, READERS, page

PAGE_SIZE = 50
MAX_COMMENT = 2000


@page(read=READERS)
def inbox(request):
    approvals, filters = selectors.inbox(request.user, request.GET)
    page_obj = Paginator(approvals, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(request, "approvals/inbox.html", {
        "rows": selectors.inbox_rows(page_obj.object_list, request.user), "page_obj": page_obj,
        "filters": filters, "query": query.urlencode(), "status_choices": selectors.STATUS_CHOICES,
        "mine_choices": selectors.MINE_CHOICES,
        "kind_choices": list(selectors.KIND_LABELS.items()), "entity_choices": ledger_selectors.entity_codes_for(request.user),
    })


def _approval_or_404(request, pk):
    approval = selectors.approval_for(request.user, pk)
    if approval is None:
        raise Http404("No such approval.")
    return approval


def _render_detail(request, approval, *, error=None, comment="", status=200):
    context = selectors.approval_context(approval, request.user)
    context.update({"error": error, "comment": comment, "max_comment": MAX_COMMENT})
    return render(request, "approvals/detail.html", context, status=status)


@page(read=READERS)
def detail(request, pk):
    return _render_detail(request, _approval_or_404(request, pk))


def _decide(request, pk, decide, verb: str):
    approval = _approval_or_404(request, pk)
    if request.method != "POST":
        return redirect("web-approval", pk=approval.pk)
    comment = (request.POST.get("comment") or "").strip()
    if len(comment) > MAX_COMMENT:
        error = {"code": "invalid_request", "detail": f"The comment may be at most {MAX_COMMENT} characters."}
        return _render_detail(request, approval, error=error, comment=comment, status=422)
    try:
        decided = decide(approval_id=approval.pk, user=request.user, comment=comment)
    except ApiError as exc:
        approval.refresh_from_db()
        return _render_detail(request, approval, error={"code": exc.code, "detail": exc.detail}, comment=comment,
                              status=exc.status)
    decided.refresh_from_db()
    period = decided.journal_id is None  # a period close or reopen
    if verb == "reject":
        messages.success(request, f"Rejected {decided.document_id}: " + (
            "the period stays as it is." if period else "its journal will never post."))
    elif decided.status == ApprovalStatus.APPROVED:
        messages.success(request, f"Approved {decided.document_id}: " + (
            ("the period is closed." if decided.kind == "period_close" else "the period is reopened.") if period
            else "its journal is released to post."))
    else:
        given = decided.decisions.filter(decision="approve").count()
        messages.success(request, f"Approval recorded ({given} of {decided.required_approvals} approvals): "
                                  "another controller must approve it too.")
    return redirect(reverse("web-approval", kwargs={"pk": decided.pk}))


@page(read=DECIDERS, write=DECIDERS)
def approve(request, pk):
    return _decide(request, pk, services.approval_approve, "approve")


@page(read=DECIDERS, write=DECIDERS)
def reject(request, pk):
    return _decide(request, pk, services.approval_reject, "reject")


urlpatterns = [
    path("", inbox, name="web-approvals"),
    path("<uuid:pk>/", detail, name="web-approval"),
    path("<uuid:pk>/approve", approve, name="web-approval-approve"),
    path("<uuid:pk>/reject", reject, name="web-approval-reject"),
]
