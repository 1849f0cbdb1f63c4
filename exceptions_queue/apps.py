"""App config for the exception queue and approvals (maker-checker)."""
from django.apps import AppConfig


class ExceptionsQueueConfig(AppConfig):
    name = "exceptions_queue"
    verbose_name = "Exceptions and approvals"

    def ready(self):
        # Models are loaded only now; the module below imports them.
        from exceptions_queue import handlers

        # The queue's own subject kinds and its receivers of the ledger's hooks.
        handlers.register()
