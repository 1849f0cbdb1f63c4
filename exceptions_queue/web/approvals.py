"""Web pages: approvals (being built; see issue #4)."""
urlpatterns = []
