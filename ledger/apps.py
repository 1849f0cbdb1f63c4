"""App config for the general ledger: entities, accounts, journals, periods, outbox and ERP connectors."""
from django.apps import AppConfig


class LedgerConfig(AppConfig):
    name = "ledger"
    verbose_name = "Ledger"

    def ready(self):
        from config import roles
        from ledger import selectors

        # Entity scope (config.roles) reads who was granted which entity from the ledger's EntityAccess.
        roles.entity_access_provide(selectors.entity_codes_granted)
