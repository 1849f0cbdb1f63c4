"""App config for billing sync: receipts, events, idempotency and canonical billing documents."""
from django.apps import AppConfig


class BillingSyncConfig(AppConfig):
    name = "billing_sync"
    verbose_name = "Billing sync"

    def ready(self):
        # Models are loaded only now; the handlers module imports them (the one import allowed here).
        from billing_sync import handlers  # noqa: PLC0415

        handlers.register()
