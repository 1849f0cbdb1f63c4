"""API routes of the ledger."""
from django.urls import path

from audit import api_views as trace_views
from ledger import views
from ledger.models import Period

urlpatterns = [
    path("ledger/trial-balance", views.TrialBalanceView.as_view(), name="trial-balance"),
    path("journals", views.JournalListView.as_view(), name="journal-list"),
    path("journals/<uuid:pk>", views.JournalDetailView.as_view(), name="journal-detail"),
    path("journals/<uuid:pk>/trace", trace_views.JournalTraceView.as_view(), name="journal-trace"),
    path("trace", trace_views.ErpReferenceTraceView.as_view(), name="erp-reference-trace"),
    path("periods/<str:entity>/<str:period>/close", views.PeriodStatusView.as_view(action=Period.Status.CLOSED),
         name="period-close"),
    path("periods/<str:entity>/<str:period>/reopen", views.PeriodStatusView.as_view(action=Period.Status.OPEN),
         name="period-reopen"),
]
