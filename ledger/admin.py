"""Admin for ledger reference data (editable through audited services, with history) and journals,
their lines and ERP attempts (read-only; large tables, so `LargeTableAdminMixin` list pages).
"""
import datetime

from django import forms
from django.contrib import admin, messages
from django.db.models import Q
from django.utils import timezone
from simple_history.admin import SimpleHistoryAdmin

from config.admin_mixins import (LargeTableAdminMixin, ReadOnlyAdminMixin, condition_filter, money_column,
                                 window_filter)
from ledger import connectors, services
from ledger.models import Account, AccountMapping, Entity, Journal, JournalLine, Period, PostingAttempt

WINDOWS = {"1h": ("Last hour", datetime.timedelta(hours=1)), "24h": ("Last 24 hours", datetime.timedelta(days=1))}
UNPOSTED = ["pending_approval", "ready", "posting", "failed"]
FAILED_OUTCOMES = ["transient", "permanent", "ambiguous", "abandoned"]


class EntityForm(forms.ModelForm):
    class Meta:
        model = Entity
        fields = ["name", "erp_connector", "erp_settings", "posting_mode"]

    def clean(self):
        cleaned = super().clean()
        for problem in services.erp_settings_problems(cleaned.get("erp_connector"), cleaned.get("erp_settings") or {}):
            self.add_error("erp_settings", problem)
        return cleaned


@admin.register(Entity)
class EntityAdmin(SimpleHistoryAdmin):
    """Entities are created with `setup_entity`; here finance admins change the ERP connection (audited)."""

    list_display = ["code", "name", "currency", "erp_connector", "posting_mode"]
    search_fields = ["code", "name"]
    fields = ["code", "name", "currency", "erp_connector", "erp_settings", "posting_mode"]
    readonly_fields = ["code", "currency"]
    form = EntityForm
    actions = ["test_connection"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        services.entity_configure_erp(entity=obj, connector=obj.erp_connector, erp_settings=obj.erp_settings or {},
                                      posting_mode=obj.posting_mode, actor=request.user)
        if "name" in form.changed_data:
            services.entity_rename(entity=obj, name=obj.name, actor=request.user)

    @admin.action(description="Test the ERP connection")
    def test_connection(self, request, queryset):
        for entity in queryset:
            try:
                message = services.entity_test_connection(entity=entity)
            except connectors.base.ConnectorError as exc:
                self.message_user(request, f"{entity.code}: {exc} ({exc.erp_message})", level=messages.ERROR)
            else:
                self.message_user(request, f"{entity.code}: {message}", level=messages.SUCCESS)


@admin.register(Account)
class AccountAdmin(SimpleHistoryAdmin):
    """Our chart per entity; the ERP's account name is mapped here (audited through the service)."""

    list_display = ["entity", "code", "name", "type", "is_active", "erp_account"]
    list_filter = ["entity", "type"]
    fields = ["entity", "code", "name", "type", "is_active", "erp_account"]

    def get_readonly_fields(self, request, obj=None):
        return ["entity", "code", "type"] if obj else []

    def save_model(self, request, obj, form, change):
        if not change:
            services.account_create(entity=obj.entity, code=obj.code, name=obj.name, type_=obj.type,
                                    erp_account=obj.erp_account, actor=request.user)
            return
        services.account_update(entity=obj.entity, account_code=obj.code, name=obj.name, is_active=obj.is_active,
                                erp_account=obj.erp_account, actor=request.user)

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AccountMapping)
class AccountMappingAdmin(SimpleHistoryAdmin):
    """Which account each posting-rule role hits: remapping is data, versioned and audited."""

    list_display = ["entity", "role", "account"]
    list_filter = ["entity"]

    def get_readonly_fields(self, request, obj=None):
        return ["entity", "role"] if obj else []

    def save_model(self, request, obj, form, change):
        services.account_mapping_set(entity=obj.entity, role=obj.role, account_code=obj.account.code,
                                     actor=request.user)

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Period)
class PeriodAdmin(ReadOnlyAdminMixin, SimpleHistoryAdmin):
    """Read-only: a period closes (its checks pass, or a second controller approves) and reopens (always
    approved) through the portal's close service, on the close page, the API or `close_period`; an admin
    form, adding a closed row included, would skip the checks and the approval."""

    list_display = ["entity", "year", "month", "status", "closed_by", "closed_at", "close_approved_by"]
    list_filter = ["entity", "status"]


class JournalLineInline(admin.TabularInline):
    model = JournalLine
    extra = 0
    can_delete = False
    fields = ["line_no", "account", "debit", "credit", "customer_id", "invoice_id", "jurisdiction"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Journal)
class JournalAdmin(LargeTableAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "entity", "kind", "status", "accounting_date", "erp_document_ref", "posting_attempts",
                    "created_at", "posted_at"]
    list_filter = [
        "status",
        "entity",
        # Each of these is served by a partial index (ledger migration 0008).
        window_filter("posted_at", "posted", WINDOWS, parameter="posted", also=Q(status="posted")),
        condition_filter("backlog", {"yes": ("Not posted yet", Q(status__in=UNPOSTED))}, parameter="unposted"),
        condition_filter("retried", {"yes": ("More than one ERP attempt", Q(posting_attempts__gt=1))},
                         parameter="retried"),
    ]
    list_select_related = ["entity"]
    search_fields = ["id", "event"]
    ordering = ["-created_at"]
    sortable_by = ("created_at",)
    entity_field = "entity__code"
    inlines = [JournalLineInline]


@admin.register(JournalLine)
class JournalLineAdmin(LargeTableAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["journal", "line_no", "account", "debit_display", "credit_display", "customer_id", "invoice_id", "memo"]
    debit_display = money_column("debit", "journal.entity.currency")
    credit_display = money_column("credit", "journal.entity.currency")
    list_select_related = ["journal", "journal__entity", "account"]
    search_fields = ["journal"]
    entity_field = "journal__entity__code"


def _failed_last_day() -> Q:
    # The window rides on the indexed started_at; the outcome narrows what it finds.
    return Q(outcome__in=FAILED_OUTCOMES, started_at__gte=timezone.now() - datetime.timedelta(days=1))


@admin.register(PostingAttempt)
class PostingAttemptAdmin(LargeTableAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "journal", "connector", "outcome", "erp_document_ref", "started_at", "finished_at"]
    list_filter = [condition_filter("failed", {"24h": ("Failed, last 24 hours", _failed_last_day)}, parameter="failed"),
                   window_filter("started_at", "started", WINDOWS, parameter="started")]
    list_select_related = ["journal"]
    search_fields = ["journal"]
    ordering = ["-started_at"]
    sortable_by = ("started_at",)
    entity_field = "journal__entity__code"
