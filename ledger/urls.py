"""API routes of the ledger (journal and ERP-reference traces are the portal's: portal/api_urls.py)."""
from django.urls import path

from ledger import views
from ledger.models import Period

urlpatterns = [
    path("ledger/trial-balance", views.TrialBalanceView.as_view(), name="trial-balance"),
    path("journals", views.JournalListView.as_view(), name="journal-list"),
    path("journals/<uuid:pk>", views.JournalDetailView.as_view(), name="journal-detail"),
    path("periods/<str:entity>/<str:period>/close", views.PeriodStatusView.as_view(action=Period.Status.CLOSED),
         name="period-close"),
    path("periods/<str:entity>/<str:period>/reopen", views.PeriodStatusView.as_view(action=Period.Status.OPEN),
         name="period-reopen"),
]
