"""Read queries of the portal's pages that combine several apps: the dashboard's figures (`dashboard`), what
an approval decision needs (`approvals`) and where the trace search leads (`trace`). Entity-scoped for the
signed-in user; they change nothing. Reads of one app alone are that app's `selectors`."""
