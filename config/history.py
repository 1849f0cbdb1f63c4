"""`HistoricalRecords` for every audited model: django-simple-history's, with its history manager's class built once
per model (3.13 builds a new class, `Manager.from_queryset` over `inspect.getmembers`, at every `Model.history`
access: about half a millisecond each, twice per document saved) and, inside a `config.deferred.write_behind`
block, its history rows written behind with the block's others."""
from django.db.models.signals import post_save
from django.utils import timezone
from simple_history import models as history_models
from simple_history.manager import HistoryManager
from simple_history.signals import post_create_historical_record, pre_create_historical_record

from config import deferred


class CachedHistoryManager(HistoryManager):
    """A HistoryManager whose `from_queryset` classes are built once per queryset class."""

    _classes: dict = {}

    @classmethod
    def from_queryset(cls, queryset_class, class_name=None):
        key = (cls, queryset_class, class_name)
        made = CachedHistoryManager._classes.get(key)
        if made is None:
            made = CachedHistoryManager._classes[key] = super().from_queryset(queryset_class, class_name)
        return made


class HistoricalRecords(history_models.HistoricalRecords):
    """django-simple-history's `HistoricalRecords`, with `CachedHistoryManager` as its default manager."""

    def __init__(self, *args, history_manager=CachedHistoryManager, **kwargs):
        super().__init__(*args, history_manager=history_manager, **kwargs)

    def finalize(self, sender, **kwargs):
        super().finalize(sender, **kwargs)
        if getattr(sender._meta, "simple_history_manager_attribute", None) and sender not in _RECORDS:
            _RECORDS[sender] = self

    def create_historical_record(self, instance, history_type, using=None):
        """Upstream's, except that inside `write_behind` the row is deferred (where nothing needs it saved at
        once: no many-to-many history, no `post_create_historical_record` receiver)."""
        if not deferred.active() or self.m2m_fields or post_create_historical_record.has_listeners():
            return super().create_historical_record(instance, history_type, using=using)
        # As django-simple-history 3.13 builds it (models.py, create_historical_record), then deferred.
        using = using if self.use_base_model_db else None
        history_date = getattr(instance, "_history_date", timezone.now())
        history_user = self.get_history_user(instance)
        history_change_reason = self.get_change_reason_for_object(instance, history_type, using)
        history_model = getattr(instance, self.manager_name).model
        attrs = {field.attname: getattr(instance, field.attname) for field in self.fields_included(instance)}
        if getattr(history_model, "history_relation", None) is not None:
            attrs["history_relation"] = instance
        history_instance = history_model(history_date=history_date, history_type=history_type,
                                         history_user=history_user, history_change_reason=history_change_reason,
                                         **attrs)
        pre_create_historical_record.send(sender=history_model, instance=instance, history_date=history_date,
                                          history_user=history_user, history_change_reason=history_change_reason,
                                          history_instance=history_instance, using=using)
        deferred.insert(history_instance)


# The HistoricalRecords of each tracked model (upstream keeps it only inside its signal receivers).
_RECORDS: dict = {}


def _history_only(model) -> None:
    # Rows written behind skip `post_save`: only a model whose one receiver is its history may be (we write that).
    sync_receivers, async_receivers = post_save._live_receivers(model)
    if async_receivers or any(getattr(r, "__self__", None) is not _RECORDS.get(model) for r in sync_receivers):
        raise TypeError(f"{model.__name__} has post_save receivers besides its history: save it, do not defer it")


def bulk_create_with_history(instances: list, model) -> list:
    """`model.objects.bulk_create(instances)` and their "+" history rows. Inside `write_behind`, the rows take ids
    from the table's sequence (`deferred.next_id`) and are written behind with their history rows, before any
    later statement of the block that names the table (so the block reads them back as if written at once);
    outside it, two statements (django-simple-history's `bulk_create_with_history`)."""
    if not deferred.active():
        created = model.objects.bulk_create(instances)
        model.history.bulk_history_create(created)
        return created
    _history_only(model)
    records = _RECORDS[model]
    for instance in instances:
        if instance.pk is None:
            instance.pk = deferred.next_id(model)
        deferred.insert_unchecked(instance, readable=True)
        records.create_historical_record(instance, "+")
    return instances


def create_with_history(instance) -> None:
    """Insert one new row of a history-tracked model: `save(force_insert=True)` (its history row by `post_save`),
    or inside `write_behind` as `bulk_create_with_history` does, so that both write the same rows."""
    if deferred.active():
        bulk_create_with_history([instance], type(instance))
    else:
        instance.save(force_insert=True)


def save_with_history(instance, update_fields: list[str]) -> None:
    """`instance.save(update_fields=...)` (its "~" history row by `post_save`); for a row still waiting to be
    written behind (`deferred.waiting`), the change stays on the instance, written with its row, and its "~"
    history row is deferred as `post_save` would have written it: no statement."""
    if deferred.change_waiting(instance):
        _history_only(type(instance))
        records = _RECORDS.get(type(instance))
        if records is not None:
            records.create_historical_record(instance, "~")
        return
    instance.save(update_fields=update_fields)
