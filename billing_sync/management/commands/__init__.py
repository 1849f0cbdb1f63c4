"""The billing_sync app's `manage.py` commands."""
