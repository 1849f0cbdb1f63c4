"""App config for the exception queue and approvals (maker-checker)."""
from django.apps import AppConfig


class ExceptionsQueueConfig(AppConfig):
    name = "exceptions_queue"
    verbose_name = "Exceptions and approvals"
