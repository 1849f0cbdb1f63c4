"""Shared admin pieces: a read-only mixin for records that only services may write."""


class ReadOnlyAdminMixin:
    """Views only: these rows change through services (audited), never through an admin form."""

    show_full_result_count = False  # no COUNT(*) over large tables on every list page

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_add_permission(self, request, obj=None):
        return False
