"""Read-only admin for the audit log: nothing here can change an entry."""
from django.contrib import admin

from audit.models import AuditEntry


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ["id", "at", "actor", "action", "object_type", "object_id", "correlation_id"]
    list_filter = ["action", "object_type"]
    search_fields = ["=object_id", "=correlation_id", "=event_id"]
    show_full_result_count = False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_add_permission(self, request):
        return False
