"""The portal app's `manage.py` commands."""
