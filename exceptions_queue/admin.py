"""Admin for approval policies (editable, versioned with history and audited) and read-only queues."""
from django.contrib import admin
from simple_history.admin import SimpleHistoryAdmin

from audit import services as audit
from config.admin_mixins import ReadOnlyAdminMixin
from exceptions_queue.models import Approval, ApprovalPolicy, ExceptionRecord

POLICY_FIELDS = ["credit_note_threshold", "write_off_threshold", "manual_journal_threshold", "two_approver_threshold"]


@admin.register(ApprovalPolicy)
class ApprovalPolicyAdmin(SimpleHistoryAdmin):
    list_display = ["entity", *POLICY_FIELDS]

    def save_model(self, request, obj, form, change):
        before = None
        if change:
            before = audit.model_snapshot(ApprovalPolicy.objects.get(pk=obj.pk), POLICY_FIELDS)
        super().save_model(request, obj, form, change)
        audit.record(actor=request.user, action="approval_policy.changed" if change else "approval_policy.created",
                     object_type="approval_policy", object_id=obj.entity.code, before=before,
                     after=audit.model_snapshot(obj, POLICY_FIELDS))

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ExceptionRecord)
class ExceptionRecordAdmin(ReadOnlyAdminMixin, SimpleHistoryAdmin):
    list_display = ["id", "code", "status", "entity_code", "owner", "created_at"]
    list_filter = ["status", "code"]


@admin.register(Approval)
class ApprovalAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "kind", "amount", "currency", "status", "requested_by_label", "required_approvals"]
    list_filter = ["status", "kind"]
