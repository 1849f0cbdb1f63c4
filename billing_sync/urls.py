"""API routes of billing sync (the traces of events and invoices are the portal's: portal/api_urls.py)."""
from django.urls import path

from billing_sync.views import adjustments, events, reconciliation, tokens

urlpatterns = [
    path("events", events.EventCollectionView.as_view(), name="events"),
    path("events/batch", events.EventBatchView.as_view(), name="event-batch"),
    path("events/<uuid:pk>", events.EventDetailView.as_view(), name="event-detail"),
    path("events/<uuid:pk>/callbacks", events.EventCallbacksView.as_view(), name="event-callbacks"),
    path("invoices/<str:source_system>/<str:invoice_id>", events.InvoiceDetailView.as_view(), name="invoice-detail"),
    path("adjustments/credit-memos", adjustments.CreditMemoView.as_view(), name="adjustment-credit-memo"),
    path("adjustments/write-offs", adjustments.WriteOffView.as_view(), name="adjustment-write-off"),
    path("reconciliation/runs", reconciliation.RunCollectionView.as_view(), name="reconciliation-runs"),
    path("reconciliation/runs/<int:pk>", reconciliation.RunDetailView.as_view(), name="reconciliation-run"),
    path("reconciliation/breaks", reconciliation.BreakListView.as_view(), name="reconciliation-breaks"),
    path("reconciliation/breaks/<int:pk>", reconciliation.BreakDetailView.as_view(), name="reconciliation-break"),
    path("reconciliation/breaks/<int:pk>/rerun", reconciliation.BreakRerunView.as_view(),
         name="reconciliation-break-rerun"),
    path("reconciliation/breaks/<int:pk>/repost", reconciliation.BreakRepostView.as_view(),
         name="reconciliation-break-repost"),
    path("reconciliation/breaks/<int:pk>/adjust", reconciliation.BreakAdjustView.as_view(),
         name="reconciliation-break-adjust"),
    path("reconciliation/breaks/<int:pk>/accept", reconciliation.BreakAcceptView.as_view(),
         name="reconciliation-break-accept"),
    path("tokens", tokens.TokenListView.as_view(), name="tokens"),
    path("tokens/<int:pk>", tokens.TokenDetailView.as_view(), name="token-detail"),
    path("tokens/<int:pk>/revoke", tokens.TokenRevokeView.as_view(), name="token-revoke"),
]
