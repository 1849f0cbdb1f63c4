"""App config for the append-only, hash-chained audit log; registers its system checks (`audit.checks`)."""
from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit log"

    def ready(self):
        from audit import checks  # noqa: F401, PLC0415 - registers the checks (Django's documented place)
