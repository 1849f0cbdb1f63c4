"""App config for billing sync: receipts, events, idempotency and canonical billing documents."""
from django.apps import AppConfig


class BillingSyncConfig(AppConfig):
    name = "billing_sync"
    verbose_name = "Billing sync"
