"""Billing sync's API views, one module per resource: events (and invoices), manual adjustments, tokens.

Views translate HTTP into service and selector calls; `billing_sync/urls.py` routes them.
"""
