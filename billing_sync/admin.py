"""Admin for events, receipts (read-only) and canonical documents (read-only, with history)."""
from django.contrib import admin
from simple_history.admin import SimpleHistoryAdmin

from config.admin_mixins import ReadOnlyAdminMixin
from billing_sync.models import ApiToken, Customer, Event, Invoice, Payment, Receipt


@admin.register(Event)
class EventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "source_system", "event_id", "type", "entity_code", "status", "received_at"]
    list_filter = ["status", "type"]
    search_fields = ["=event_id", "=id"]


@admin.register(Receipt)
class ReceiptAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "received_at", "endpoint", "client", "outcome", "status_code", "sha256"]
    list_filter = ["outcome", "endpoint"]


@admin.register(Customer)
class CustomerAdmin(ReadOnlyAdminMixin, SimpleHistoryAdmin):
    list_display = ["source_system", "customer_id", "name", "version"]
    search_fields = ["=customer_id", "name"]


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdminMixin, SimpleHistoryAdmin):
    list_display = ["source_system", "invoice_id", "number", "entity", "total", "status", "version"]
    search_fields = ["=invoice_id", "=number"]


@admin.register(Payment)
class PaymentAdmin(ReadOnlyAdminMixin, SimpleHistoryAdmin):
    list_display = ["source_system", "payment_id", "entity", "amount", "allocated_total"]
    search_fields = ["=payment_id"]


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["prefix", "user", "name", "created_at", "revoked_at"]
