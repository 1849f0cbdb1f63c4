"""Read-only admin for the audit log: nothing here can change an entry."""
from django.contrib import admin

from audit.models import AuditEntry
from config.admin_mixins import ReadOnlyAdminMixin


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "at", "actor", "action", "object_type", "object_id", "correlation_id"]
    list_filter = ["action", "object_type"]
    search_fields = ["=object_id", "=correlation_id", "=event_id"]
