"""API routes of billing sync (the traces of events and invoices are the portal's: portal/api_urls.py)."""
from django.urls import path

from billing_sync import adjustment_views, token_views, views

urlpatterns = [
    path("events", views.EventCollectionView.as_view(), name="events"),
    path("events/batch", views.EventBatchView.as_view(), name="event-batch"),
    path("events/<uuid:pk>", views.EventDetailView.as_view(), name="event-detail"),
    path("events/<uuid:pk>/callbacks", views.EventCallbacksView.as_view(), name="event-callbacks"),
    path("invoices/<str:source_system>/<str:invoice_id>", views.InvoiceDetailView.as_view(), name="invoice-detail"),
    path("adjustments/credit-memos", adjustment_views.CreditMemoView.as_view(), name="adjustment-credit-memo"),
    path("adjustments/write-offs", adjustment_views.WriteOffView.as_view(), name="adjustment-write-off"),
    path("tokens", token_views.TokenListView.as_view(), name="tokens"),
    path("tokens/<int:pk>", token_views.TokenDetailView.as_view(), name="token-detail"),
    path("tokens/<int:pk>/revoke", token_views.TokenRevokeView.as_view(), name="token-revoke"),
]
