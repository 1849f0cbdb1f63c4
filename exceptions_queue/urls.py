"""API routes of exceptions_queue."""
urlpatterns = []
