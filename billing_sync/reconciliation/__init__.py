"""The reconciliation engine (billing ↔ ledger ↔ ERP), below the services that run it
(`billing_sync.services.reconciliation`). A run works in session temporary tables (`tables`): what it checked
(`recon_checked` subjects for the marks, `recon_scope` tokens for resolving breaks) and what it found
(`recon_found`, one row per discrepancy with its key, objects, expected and actual values). `billing` fills them
with set-based SQL where both sides are ours; `erp` streams the ERP's read-back through the entity's connector
into staging tables and compares it with our posted journals in SQL. `context.Plan` says what one run checks
(a date range, incremental or full, or one object)."""
