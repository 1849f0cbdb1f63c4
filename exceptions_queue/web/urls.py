"""Routes of the staff web UI, one module per area (each module holds its own `urlpatterns`)."""
from django.urls import include, path

from audit import web as audit_web
from exceptions_queue.web import accounts, adjustments, approvals, dashboard, queue

urlpatterns = [
    path("accounts/", include(accounts)),
    path("exceptions/", include(queue)),
    path("approvals/", include(approvals)),
    path("adjustments/", include(adjustments)),
    path("", include(audit_web)),  # trace/ and evidence/
    path("", include(dashboard)),
]
