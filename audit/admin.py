"""Read-only admin for the audit log: nothing here can change an entry (the database refuses it too), and
its list page is built for the largest table (`LargeTableAdminMixin`: estimated counts, a fixed-choice
filter on the indexed object_type, exact search on the indexed correlation and event ids); entries span
entities, so only staff who may see every entity list them."""
from django.contrib import admin

from audit.models import AuditEntry
from config.admin_mixins import LargeTableAdminMixin, ReadOnlyAdminMixin, choices_filter

OBJECT_TYPES = ["account", "account_mapping", "api_token", "approval", "approval_policy", "callback_delivery",
                "credit_note", "customer", "entity", "erp_batch", "event", "exception",
                "invoice", "journal", "payment", "period", "receipt", "refund", "source_system", "user",
                "write_off"]


@admin.register(AuditEntry)
class AuditEntryAdmin(LargeTableAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "at", "actor", "action", "object_type", "object_id", "correlation_id"]
    list_filter = [choices_filter("object_type", "object type", OBJECT_TYPES)]
    search_fields = ["correlation_id", "event_id"]
    ordering = ["-id"]
    sortable_by = ("id",)
    entity_field = None
