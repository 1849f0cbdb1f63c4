"""API routes of the read side: the traces (lineage) of events, invoices, journals, exceptions and ERP
document references, the period close (checks, close, reopen), the receivables and cash reports and the ledger
export. Included by config/urls.py under api/v1/, beside the domain apps' own routes, with the paths and names they
always had."""
from django.urls import path

from portal import api_views

urlpatterns = [
    path("events/<uuid:pk>/trace", api_views.EventTraceView.as_view(), name="event-trace"),
    path("invoices/<str:source_system>/<str:invoice_id>/trace", api_views.InvoiceTraceView.as_view(),
         name="invoice-trace"),
    path("journals/<uuid:pk>/trace", api_views.JournalTraceView.as_view(), name="journal-trace"),
    path("trace", api_views.ErpReferenceTraceView.as_view(), name="erp-reference-trace"),
    path("exceptions/<uuid:pk>/trace", api_views.ExceptionTraceView.as_view(), name="exception-trace"),
    path("periods/<str:entity>/<str:period>/close", api_views.PeriodCloseView.as_view(), name="period-close"),
    path("periods/<str:entity>/<str:period>/reopen", api_views.PeriodReopenView.as_view(), name="period-reopen"),
    path("reports/ar-aging", api_views.ArAgingView.as_view(), name="report-ar-aging"),
    path("reports/unapplied-cash", api_views.UnappliedCashView.as_view(), name="report-unapplied-cash"),
    path("customers/<str:source_system>/<str:customer_id>/statement", api_views.CustomerStatementView.as_view(),
         name="customer-statement"),
    path("ledger/export", api_views.LedgerExportView.as_view(), name="ledger-export"),
]
