"""API routes of billing_sync."""
urlpatterns = []
