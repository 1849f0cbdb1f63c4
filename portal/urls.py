"""Routes of the staff web UI, one module per area (each module holds its own `urlpatterns`), mounted at
the site root by config/urls.py."""
from django.urls import include, path

from portal.web import accounts, adjustments, approvals, close, dashboard, queue, reconciliation, reports, trace

urlpatterns = [
    path("accounts/", include(accounts)),
    path("exceptions/", include(queue)),
    path("approvals/", include(approvals)),
    path("adjustments/", include(adjustments)),
    path("close/", include(close)),
    path("reconciliation/", include(reconciliation)),
    path("reports/", include(reports)),
    path("", include(trace)),  # trace/ and evidence/
    path("", include(dashboard)),
]
