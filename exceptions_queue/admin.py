"""Admin for approval policies (editable, versioned with history and audited) and read-only queues."""
from django.contrib import admin
from simple_history.admin import SimpleHistoryAdmin

from config.admin_mixins import ReadOnlyAdminMixin
from exceptions_queue import services
from exceptions_queue.models import Approval, ApprovalPolicy, ExceptionRecord
from exceptions_queue.services import POLICY_FIELDS


@admin.register(ApprovalPolicy)
class ApprovalPolicyAdmin(SimpleHistoryAdmin):
    list_display = ["entity", *POLICY_FIELDS]

    def save_model(self, request, obj, form, change):
        services.approval_policy_update(entity=obj.entity, values={f: getattr(obj, f) for f in POLICY_FIELDS},
                                        actor=request.user)

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
from exceptions_queue import admin_users  # noqa: E402,F401  (users, roles and entity access)
