"""Management commands of the ledger app."""
