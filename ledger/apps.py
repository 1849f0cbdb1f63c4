"""App config for the general ledger: entities, accounts, journals, periods, outbox and ERP connectors."""
from django.apps import AppConfig


class LedgerConfig(AppConfig):
    name = "ledger"
    verbose_name = "Ledger"
