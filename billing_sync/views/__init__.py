"""Billing sync's API views, one module per resource (events and invoices, manual adjustments, tokens); views
translate HTTP into service and selector calls and `billing_sync/urls.py` routes them."""
