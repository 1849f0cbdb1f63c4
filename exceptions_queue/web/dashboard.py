"""Web pages: dashboard (being built; see issue #4)."""
urlpatterns = []
