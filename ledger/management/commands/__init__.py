"""The ledger app's `manage.py` commands."""
