"""API routes of ledger."""
urlpatterns = []
