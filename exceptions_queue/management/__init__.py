"""Management commands package of the exceptions_queue app."""
