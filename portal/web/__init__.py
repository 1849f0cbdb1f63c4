"""The staff web UI: server-rendered pages for sign-in, the exception queue, approvals, manual adjustments,
the trace search and timelines, evidence packs and the operations dashboard. Views are thin: they read through
selectors, write through the services the API calls (audited the same way) and let `access` decide who may do
what, on the server, for every request."""
