"""App config for the exception queue and approvals (maker-checker)."""
from django.apps import AppConfig


class ExceptionsQueueConfig(AppConfig):
    name = "exceptions_queue"
    verbose_name = "Exceptions and approvals"

    def ready(self):
        # Sign-in, sign-out and failed sign-in become audit entries (thin adapters over one service).
        from exceptions_queue import auth_services

        auth_services.connect_signals()
