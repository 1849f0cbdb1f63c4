"""Shared admin pieces: read-only records (`ReadOnlyAdminMixin`) and list pages that stay fast on tables of
millions of rows (`FastCountPaginator`, `LargeTableAdminMixin`), plus list filters and money columns."""
from django.contrib import admin
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Q
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html

from config import roles
from config.money import display

COUNT_CAP = 10_000


def table_estimate(model, using: str = "default") -> int:
    """PostgreSQL's estimate of the table's rows; -1 when the table was never analysed."""
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [model._meta.db_table])
        row = cursor.fetchone()
    return int(row[0]) if row else -1


def capped_count(queryset, cap: int = COUNT_CAP) -> int:
    """The number of rows, counted up to cap + 1 (an answer of cap + 1 means "more than cap")."""
    return queryset.order_by().values("pk")[: cap + 1].count()


class FastCountPaginator(Paginator):
    """A paginator whose `count` never scans a whole large table.

    Django's changelist counts every row it could show (`SELECT COUNT(*)`) on every page load; on a table of
    millions that is a sequential scan each time. Unfiltered, we use PostgreSQL's own estimate
    (`pg_class.reltuples`, kept by autovacuum/ANALYZE); filtered, we count at most CAP + 1 rows
    (`SELECT count(*) FROM (SELECT ... LIMIT CAP + 1)`), which an index range scan answers quickly.
    """

    cap = COUNT_CAP

    @cached_property
    def count(self):
        queryset = self.object_list
        query = getattr(queryset, "query", None)
        if query is None:
            return len(queryset)
        if not query.where:
            estimate = table_estimate(queryset.model, queryset.db)
            if estimate > self.cap:
                return estimate
        # Small (or never analysed) table, or a filtered list: count, but never beyond the cap.
        return capped_count(queryset, self.cap)


class ReadOnlyAdminMixin:
    """Views only: these rows change through services (audited), never through an admin form."""

    show_full_result_count = False  # no COUNT(*) over large tables on every list page

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_add_permission(self, request, obj=None):
        return False


def _field_at(model, path: str):
    """The model field at the end of a lookup path such as "journal__entity__code"."""
    parts = path.split("__")
    for part in parts[:-1]:
        model = model._meta.get_field(part).related_model
    field = model._meta.get_field(parts[-1])
    return field.target_field if field.is_relation and field.many_to_one else field


class LargeTableAdminMixin:
    """List pages for large tables: estimated/capped counts, indexed sorting and exact search, entity scope.

    That is: `FastCountPaginator`, no full-result count, no facet counts, sorting only on the columns a model
    admin names (indexed ones), exact-match search on the indexed columns named in `search_fields` (a value
    that is not valid for a column, say "abc" for a UUID, simply matches nothing there), and rows narrowed to
    the user's entities (models without an entity column are shown only to users who may see every entity).

    `entity_field` is the lookup of the entity code on the model's rows ("entity_code", "entity__code",
    "journal__entity__code", ...), or None for models that span entities.
    """

    paginator = FastCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 50
    entity_field: str | None = None
    sortable_by: tuple = ()

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        codes = roles.entity_codes(request.user)
        if codes is None:
            return queryset
        if self.entity_field is None:
            return queryset.none()  # spans entities: only for users who may see them all
        return queryset.filter(**{f"{self.entity_field}__in": codes})

    def get_sortable_by(self, request):
        return self.sortable_by

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        fields = self.get_search_fields(request)
        if not term or not fields:
            return queryset, False
        condition = Q()
        for spec in fields:
            path = spec.lstrip("=").removesuffix("__exact")
            try:
                value = _field_at(self.model, path).to_python(term)
            except (ValidationError, ValueError, TypeError, FieldDoesNotExist):
                continue  # not a valid value for this column (e.g. "abc" for a UUID): cannot match here
            condition |= Q(**{f"{path}__exact": value})
        if not condition:
            return queryset.none(), False
        return queryset.filter(condition), False


# List filters that never ask the database for their choices ----------------------------------------
# (Django's default filter on a plain column runs SELECT DISTINCT over the whole table to list them.)
def choices_filter(field: str, title: str, choices, *, parameter: str | None = None):
    """A list filter on `field` offering fixed `choices` ([(value, label)] or [value])."""
    options = [(c, c) if isinstance(c, str) else tuple(c) for c in choices]

    class ChoicesFilter(admin.SimpleListFilter):
        parameter_name = parameter or field

        def lookups(self, request, model_admin):
            return options

        def queryset(self, request, queryset):
            value = self.value()
            if value in dict(options):
                return queryset.filter(**{field: value})
            return queryset

    ChoicesFilter.title = title
    ChoicesFilter.__name__ = f"{(parameter or field).title().replace('_', '')}Filter"
    return ChoicesFilter


def window_filter(field: str, title: str, windows: dict, *, parameter: str, also: Q | None = None):
    """A list filter "`field` within the last ..." ({value: (label, timedelta)}), on an indexed time column;
    `also` is a condition that comes with it (say status="posted", so that a partial index applies)."""

    class WindowFilter(admin.SimpleListFilter):
        parameter_name = parameter

        def lookups(self, request, model_admin):
            return [(value, label) for value, (label, _delta) in windows.items()]

        def queryset(self, request, queryset):
            value = self.value()
            if value in windows:
                queryset = queryset.filter(**{f"{field}__gte": timezone.now() - windows[value][1]})
                return queryset.filter(also) if also is not None else queryset
            return queryset

    WindowFilter.title = title
    WindowFilter.__name__ = f"{parameter.title().replace('_', '')}WindowFilter"
    return WindowFilter


def condition_filter(title: str, conditions: dict, *, parameter: str):
    """A list filter of named conditions ({value: (label, Q or a function returning a Q)}), each served by an
    index; a function is called per request (conditions relative to now)."""

    class ConditionFilter(admin.SimpleListFilter):
        parameter_name = parameter

        def lookups(self, request, model_admin):
            return [(value, label) for value, (label, _q) in conditions.items()]

        def queryset(self, request, queryset):
            value = self.value()
            if value in conditions:
                condition = conditions[value][1]
                return queryset.filter(condition() if callable(condition) else condition)
            return queryset

    ConditionFilter.title = title
    ConditionFilter.__name__ = f"{parameter.title().replace('_', '')}ConditionFilter"
    return ConditionFilter


def money_column(field: str, currency: str = "currency", description: str | None = None):
    """A list_display column showing a money field as the pages do (`16,087.50`, the currency's digits).

    `currency` is the attribute path (dotted) of the row's currency code; the stored value has four
    decimals whatever the currency, which reads badly in a list.
    """
    def column(_admin, obj):
        code = obj
        for part in currency.split("."):
            code = getattr(code, part, None)
        # Right-aligned with figures of one width, as the pages' `num` columns: amounts compare by eye.
        return format_html('<span style="display:block;text-align:right;font-variant-numeric:tabular-nums">{}</span>',
                           display(getattr(obj, field), code if isinstance(code, str) else None))

    column.__name__ = f"{field}_display"
    return admin.display(description=description or field.replace("_", " "))(column)
