"""API routes of the ledger (journal and ERP-reference traces, and the period close, are the portal's:
portal/api_urls.py)."""
from django.urls import path

from ledger import views

urlpatterns = [
    path("ledger/trial-balance", views.TrialBalanceView.as_view(), name="trial-balance"),
    path("journals", views.JournalListView.as_view(), name="journal-list"),
    path("journals/<uuid:pk>", views.JournalDetailView.as_view(), name="journal-detail"),
]
