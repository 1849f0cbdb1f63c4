"""Web pages: queue (being built; see issue #4)."""
urlpatterns = []
