"""API routes of exceptions, approvals and manual journals (an exception's trace is the portal's:
portal/api_urls.py)."""
from django.urls import path

from exceptions_queue import views

urlpatterns = [
    path("approvals", views.ApprovalListView.as_view(), name="approval-list"),
    path("approvals/<uuid:pk>", views.ApprovalDetailView.as_view(), name="approval-detail"),
    path("approvals/<uuid:pk>/approve", views.ApprovalApproveView.as_view(), name="approval-approve"),
    path("approvals/<uuid:pk>/reject", views.ApprovalRejectView.as_view(), name="approval-reject"),
    path("exceptions", views.ExceptionListView.as_view(), name="exception-list"),
    path("exceptions/<uuid:pk>", views.ExceptionDetailView.as_view(), name="exception-detail"),
    path("exceptions/<uuid:pk>/assign", views.ExceptionAssignView.as_view(), name="exception-assign"),
    path("exceptions/<uuid:pk>/retry", views.ExceptionRetryView.as_view(), name="exception-retry"),
    path("exceptions/<uuid:pk>/resolve", views.ExceptionResolveView.as_view(), name="exception-resolve"),
    path("exceptions/<uuid:pk>/comment", views.ExceptionCommentView.as_view(), name="exception-comment"),
    path("exceptions/<uuid:pk>/escalate", views.ExceptionEscalateView.as_view(), name="exception-escalate"),
    path("exceptions/<uuid:pk>/replay", views.ExceptionReplayView.as_view(), name="exception-replay"),
    path("journals/manual", views.ManualJournalView.as_view(), name="journal-manual"),
]
