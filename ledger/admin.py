"""Admin for ledger reference data (editable, with history) and journals (read-only)."""
from django.contrib import admin
from simple_history.admin import SimpleHistoryAdmin

from ledger.models import Account, AccountMapping, Entity, Journal, JournalLine, Period


@admin.register(Entity)
class EntityAdmin(SimpleHistoryAdmin):
    list_display = ["code", "name", "currency", "erp_connector", "posting_mode"]
    search_fields = ["code", "name"]


@admin.register(Account)
class AccountAdmin(SimpleHistoryAdmin):
    list_display = ["entity", "code", "name", "type", "is_active", "erp_account"]
    list_filter = ["entity", "type"]


@admin.register(AccountMapping)
class AccountMappingAdmin(SimpleHistoryAdmin):
    list_display = ["entity", "role", "account"]
    list_filter = ["entity"]


@admin.register(Period)
class PeriodAdmin(SimpleHistoryAdmin):
    list_display = ["entity", "year", "month", "status", "closed_by", "closed_at"]
    list_filter = ["entity", "status"]

    def has_change_permission(self, request, obj=None):
        return False  # closing goes through ledger.services.period_set_status (API / close_period)


class JournalLineInline(admin.TabularInline):
    model = JournalLine
    extra = 0
    can_delete = False
    fields = ["line_no", "account", "debit", "credit", "customer_id", "invoice_id", "jurisdiction"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Journal)
class JournalAdmin(admin.ModelAdmin):
    list_display = ["id", "entity", "kind", "status", "accounting_date", "erp_document_ref", "posted_at"]
    list_filter = ["status", "entity", "kind"]
    search_fields = ["=id", "=erp_document_ref", "document_id"]
    show_full_result_count = False
    inlines = [JournalLineInline]

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_add_permission(self, request):
        return False
