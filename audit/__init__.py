"""The audit app: the append-only, hash-chained audit log."""
