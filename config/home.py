"""The portal's landing page: headline figures for signed-in staff and where to go next."""
from django.db.models import Count
from django.shortcuts import render


def home(request):
    figures = []
    if request.user.is_authenticated and request.user.is_staff:
        from billing_sync.models import Event
        from exceptions_queue.models import Approval, ExceptionRecord
        from ledger.models import Journal

        by_status = dict(Event.objects.values_list("status").annotate(n=Count("id")))
        figures = [
            ("events received", sum(by_status.values())),
            ("events posted", by_status.get("posted", 0)),
            ("open exceptions", ExceptionRecord.objects.exclude(status="resolved").count()),
            ("pending approvals", Approval.objects.filter(status="pending").count()),
            ("journals posted", Journal.objects.filter(status="posted").count()),
        ]
    return render(request, "home.html", {"figures": figures})
