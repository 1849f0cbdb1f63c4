"""Web pages: accounts (being built; see issue #4)."""
urlpatterns = []
