"""Admin for approval policies (editable through the audited service, versioned with history) and the
exception queue and approvals (read-only: they change through the queue's services and pages); exceptions and
approvals are large tables, so their list pages use `LargeTableAdminMixin` (estimated or capped counts,
filters on indexed columns with fixed choices, exact search, the user's entities only)."""
from django.contrib import admin
from simple_history.admin import SimpleHistoryAdmin

from config.admin_mixins import LargeTableAdminMixin, ReadOnlyAdminMixin, choices_filter, money_column
from config.errors import Codes
from exceptions_queue import services
from exceptions_queue.models import Approval, ApprovalPolicy, ExceptionRecord
from exceptions_queue.services import POLICY_FIELDS

# The business-rule codes an exception can carry (config/errors.py), as fixed filter choices.
EXCEPTION_CODES = sorted({
    Codes.UNKNOWN_ENTITY, Codes.UNKNOWN_CUSTOMER, Codes.UNKNOWN_INVOICE, Codes.UNKNOWN_PAYMENT,
    Codes.AWAITING_DEPENDENCY, Codes.OVER_APPLICATION, Codes.OVER_REFUND, Codes.OVER_CREDIT, Codes.OVER_WRITE_OFF,
    Codes.NO_ACCOUNT_MAPPING, Codes.PERIOD_CLOSED, Codes.AMENDMENT_BELOW_APPLIED, Codes.VOID_WITH_APPLICATIONS,
    Codes.CURRENCY_MISMATCH, Codes.DOCUMENT_CONFLICT, Codes.POSTING_FAILED, Codes.CALLBACK_FAILED,
})


@admin.register(ApprovalPolicy)
class ApprovalPolicyAdmin(SimpleHistoryAdmin):
    list_display = ["entity", *POLICY_FIELDS]

    def save_model(self, request, obj, form, change):
        services.approval_policy_update(entity=obj.entity, values={f: getattr(obj, f) for f in POLICY_FIELDS},
                                        actor=request.user)

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ExceptionRecord)
class ExceptionRecordAdmin(LargeTableAdminMixin, ReadOnlyAdminMixin, SimpleHistoryAdmin):
    list_display = ["id", "code", "status", "process", "entity_code", "owner", "retry_count", "created_at"]
    list_filter = ["status", choices_filter("code", "code", EXCEPTION_CODES), "process"]
    list_select_related = ["owner"]
    search_fields = ["id", "event", "source_ref"]
    ordering = ["-created_at"]
    sortable_by = ("created_at",)
    entity_field = "entity_code"


@admin.register(Approval)
class ApprovalAdmin(LargeTableAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "kind", "entity", "amount_display", "currency", "status", "requested_by_label",
                    "required_approvals", "created_at"]
    amount_display = money_column("amount")
    list_filter = ["status"]
    list_select_related = ["entity"]
    search_fields = ["id", "event"]
    ordering = ["-created_at"]
    sortable_by = ("created_at",)
    entity_field = "entity__code"

