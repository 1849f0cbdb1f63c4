"""The billing sync app: receipts and events from source billing systems, canonical documents, callbacks and
API tokens."""
