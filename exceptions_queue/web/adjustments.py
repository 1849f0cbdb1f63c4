"""Web pages: adjustments (being built; see issue #4)."""
urlpatterns = []
