"""Read queries of the portal's pages: the dashboard's figures (`dashboard`) and what an approval
decision needs (`approvals`). Entity-scoped for the signed-in user; they change nothing."""
