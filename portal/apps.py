"""App config of the portal: the read side and the staff web UI, the top layer that nothing imports."""
from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"
    label = "portal"
    verbose_name = "Staff portal and read side"

    def ready(self):
        # Sign-in, sign-out and failed sign-in become audit entries (thin adapters over one service).
        # Imported here, not at the top: the services import models, which exist only once apps are ready.
        from portal import auth_services, handlers  # noqa: PLC0415

        auth_services.connect_signals()
        # Period close and reopen approvals (the workflow's journal-less kinds the portal owns).
        handlers.register()
