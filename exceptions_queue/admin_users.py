"""Admin for users, their roles and the entities they may see (being built; see issue #4)."""
