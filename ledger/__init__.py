"""The ledger app: the general ledger (entities, accounts, journals, periods, outbox and ERP connectors)."""
