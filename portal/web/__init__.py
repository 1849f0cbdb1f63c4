"""The staff web UI: server-rendered pages for sign-in, the exception queue, approvals, manual
adjustments, the trace search and timelines, evidence packs and the operations dashboard.

Views here are thin, like the API's: they read through selectors, write through the same services the
API calls (so every action is audited the same way) and let `access` decide who may do what, on the
server, for every request.
"""
