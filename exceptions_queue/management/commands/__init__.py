"""The exceptions_queue app's `manage.py` commands."""
