"""Management commands package of the billing_sync app."""
