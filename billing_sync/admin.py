"""Admin for billing data: events, receipts and deliveries (read-only), canonical documents (read-only, with
their history), source systems (edited through the audited `callbacks.source_system_configure`) and API tokens
(read-only, with an audited "Revoke" action for admins). Events, receipts and deliveries are the large tables:
their list pages use `LargeTableAdminMixin` (estimated or capped counts, filters and exact searches on indexed
columns only, entity scope)."""
import datetime

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import Q
from simple_history.admin import SimpleHistoryAdmin

from billing_sync import callbacks, tokens
from billing_sync.models import (
    ApiToken, CallbackDelivery, CreditNote, Customer, Event, Invoice, Payment, Receipt, Refund, SourceSystem,
    WriteOff,
)
from billing_sync.schemas import EVENT_TYPES
from config.admin_mixins import (
    LargeTableAdminMixin, ReadOnlyAdminMixin, choices_filter, condition_filter, money_column, window_filter,
)
from config import roles
from config.errors import Conflict, TieoutError

WINDOWS = {"1h": ("Last hour", datetime.timedelta(hours=1)), "24h": ("Last 24 hours", datetime.timedelta(days=1)),
           "14d": ("Last 14 days", datetime.timedelta(days=14))}


@admin.register(Event)
class EventAdmin(LargeTableAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "source_system", "event_id", "type", "entity_code", "status", "received_at"]
    list_filter = [
        window_filter("received_at", "received", WINDOWS, parameter="received"),
        condition_filter("outcome", {"failed": ("Failed (exception or rejected)",
                                                Q(status__in=["exception", "rejected"]))}, parameter="outcome"),
        "status",
        choices_filter("type", "type", sorted(EVENT_TYPES)),
    ]
    search_fields = ["id", "event_id"]
    ordering = ["-received_at"]
    sortable_by = ("received_at",)
    entity_field = "entity_code"


@admin.register(Receipt)
class ReceiptAdmin(LargeTableAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """Raw requests as received; they span entities (a body may name any), so only all-entity staff see them."""

    list_display = ["id", "received_at", "endpoint", "client", "outcome", "status_code", "sha256"]
    list_filter = [window_filter("received_at", "received", WINDOWS, parameter="received")]
    search_fields = ["id"]
    ordering = ["-received_at"]
    sortable_by = ("received_at",)
    entity_field = None


@admin.register(CallbackDelivery)
class CallbackDeliveryAdmin(LargeTableAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "source_system", "event", "kind", "status", "attempts", "last_status_code", "created_at"]
    list_filter = ["status"]
    list_select_related = ["source_system", "event"]
    search_fields = ["id", "event"]
    ordering = ["-created_at"]
    sortable_by = ("created_at",)
    entity_field = "event__entity_code"


@admin.register(Customer)
class CustomerAdmin(LargeTableAdminMixin, ReadOnlyAdminMixin, SimpleHistoryAdmin):
    list_display = ["source_system", "customer_id", "name", "entity_code", "version"]
    search_fields = ["customer_id"]
    entity_field = "entity_code"


@admin.register(Invoice)
class InvoiceAdmin(LargeTableAdminMixin, ReadOnlyAdminMixin, SimpleHistoryAdmin):
    list_display = ["source_system", "invoice_id", "number", "entity", "total_display", "status", "version"]
    total_display = money_column("total")
    list_select_related = ["entity"]
    search_fields = ["invoice_id"]
    entity_field = "entity__code"


@admin.register(Payment)
class PaymentAdmin(LargeTableAdminMixin, ReadOnlyAdminMixin, SimpleHistoryAdmin):
    list_display = ["source_system", "payment_id", "entity", "amount_display", "allocated_total_display"]
    amount_display = money_column("amount")
    allocated_total_display = money_column("allocated_total")
    list_select_related = ["entity"]
    search_fields = ["payment_id"]
    entity_field = "entity__code"


@admin.register(CreditNote)
class CreditNoteAdmin(LargeTableAdminMixin, ReadOnlyAdminMixin, SimpleHistoryAdmin):
    list_display = ["source_system", "credit_note_id", "invoice", "amount_display", "tax_amount_display", "status"]
    amount_display = money_column("amount")
    tax_amount_display = money_column("tax_amount")
    list_select_related = ["invoice"]
    entity_field = "invoice__entity__code"


@admin.register(WriteOff)
class WriteOffAdmin(LargeTableAdminMixin, ReadOnlyAdminMixin, SimpleHistoryAdmin):
    list_display = ["source_system", "write_off_id", "invoice", "amount_display", "status"]
    amount_display = money_column("amount")
    list_select_related = ["invoice"]
    entity_field = "invoice__entity__code"


@admin.register(Refund)
class RefundAdmin(LargeTableAdminMixin, ReadOnlyAdminMixin, SimpleHistoryAdmin):
    list_display = ["source_system", "refund_id", "payment", "invoice", "amount_display"]
    amount_display = money_column("amount")
    list_select_related = ["payment", "invoice"]
    entity_field = "payment__entity__code"


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Tokens are issued with `issue_token` and revoked with `revoke_token` or the "Revoke" action here
    (admins only; through the audited `tokens.token_revoke`). Only their prefix is ever shown."""

    list_display = ["id", "prefix", "user", "name", "source_systems", "entities", "created_at", "expires_at",
                    "last_used_at", "revoked_at"]
    list_select_related = ["user"]
    search_fields = ["user__username", "prefix"]
    fields = ["prefix", "user", "name", "source_systems", "entities", "created_at", "expires_at", "last_used_at",
              "revoked_at"]
    ordering = ["-created_at"]
    actions = ["revoke"]

    def has_revoke_permission(self, request):
        return roles.has_role(request.user, roles.ADMIN)

    @admin.action(description="Revoke selected tokens", permissions=["revoke"])
    def revoke(self, request, queryset):
        revoked, skipped = [], 0
        for token_id in queryset.order_by("pk").values_list("pk", flat=True):
            try:
                revoked.append(tokens.token_revoke(token_id=token_id, actor=request.user))
            except Conflict:  # already revoked: nothing to do
                skipped += 1
        note = f" ({skipped} already revoked)" if skipped else ""
        self.message_user(request, f"Revoked {len(revoked)} token(s){note}: "
                                   + (", ".join(t.prefix for t in revoked) or "none"), messages.SUCCESS)


class SourceSystemForm(forms.ModelForm):
    """Checks the settings with the service itself (in a transaction rolled back), so its rules apply."""

    callback_url = forms.URLField(required=False, max_length=500, assume_scheme="https")

    class Meta:
        model = SourceSystem
        fields = ["name", "callback_url", "secret_env", "is_active"]

    class _DryRun(Exception):
        pass

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        try:
            with transaction.atomic():
                callbacks.source_system_configure(
                    name=cleaned.get("name") or self.instance.name, callback_url=cleaned.get("callback_url", ""),
                    secret_env=cleaned.get("secret_env", ""), is_active=cleaned.get("is_active", True),
                    actor="admin:validation")
                raise self._DryRun
        except self._DryRun:
            pass
        except TieoutError as exc:
            for problem in exc.errors or [{"field": None, "message": exc.detail}]:
                field = problem.get("field") if problem.get("field") in self.fields else None
                self.add_error(field, problem["message"])
        return cleaned


@admin.register(SourceSystem)
class SourceSystemAdmin(SimpleHistoryAdmin):
    """Where status callbacks go and which environment variable holds their signing secret (never the
    secret itself). Every change goes through `callbacks.source_system_configure` (audited)."""

    form = SourceSystemForm
    list_display = ["name", "callback_url", "secret_env", "is_active", "updated_at"]
    search_fields = ["name"]

    def get_readonly_fields(self, request, obj=None):
        return ["name"] if obj else []  # events carry the name: renaming would orphan them

    def save_model(self, request, obj, form, change):
        source, _outcome = callbacks.source_system_configure(
            name=obj.name, callback_url=obj.callback_url, secret_env=obj.secret_env, is_active=obj.is_active,
            actor=request.user)
        obj.pk = source.pk

    def has_delete_permission(self, request, obj=None):
        return False
