"""URL map: health probes, metrics, the v1 API, its OpenAPI schema and docs, the admin and the staff
portal. The portal (read side and staff UI, the top layer) is reached from here only: its trace API routes
sit under api/v1/ beside the domain apps' own, its pages at the site root."""
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config import health
from portal import metrics
from portal.web import accounts

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics, name="metrics"),
    path("api/v1/schema", SpectacularAPIView.as_view(), name="schema"),
    path("api/v1/docs", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/v1/", include("billing_sync.urls")),
    path("api/v1/", include("ledger.urls")),
    path("api/v1/", include("exceptions_queue.urls")),
    # Traces of events, invoices, journals, exceptions and ERP references (the read side).
    path("api/v1/", include("portal.api_urls")),
    # One guarded door: the admin's login page sends people to ours (lockout, 2FA, audit).
    path("admin/login/", accounts.admin_login, name="admin-login"),
    path("admin/", admin.site.urls),
    path("", include("portal.urls")),
]
