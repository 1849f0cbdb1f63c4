"""Management commands package of the portal app."""
