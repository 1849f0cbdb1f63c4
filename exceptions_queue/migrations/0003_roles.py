"""The portal's roles as Django groups, with the model permissions each one holds.

Roles are decided by group membership (config.roles); the permissions below are what the Django admin
shows each group (an auditor sees everything read-only). Re-running is harmless: groups and their
permission sets are made to match this table.
"""
from django.db import migrations

APPS = ("audit", "billing_sync", "ledger", "exceptions_queue")
WORKER_EXTRA = ["exceptions_queue.change_exceptionrecord", "exceptions_queue.add_exceptioncomment",
                "billing_sync.add_creditnote", "billing_sync.add_writeoff", "ledger.add_journal"]
CONTROLLER_EXTRA = WORKER_EXTRA + ["exceptions_queue.change_approval", "ledger.change_period"]
INTEGRATION = ["billing_sync.add_event", "billing_sync.view_event"]


def create_roles(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")

    def perms(names):
        out = []
        for name in names:
            app_label, codename = name.split(".")
            out.extend(Permission.objects.filter(content_type__app_label=app_label, codename=codename))
        return out

    view_all = list(Permission.objects.filter(content_type__app_label__in=APPS, codename__startswith="view_"))
    table = {
        "integration": perms(INTEGRATION),
        "finance_ops": view_all + perms(WORKER_EXTRA),
        "controller": view_all + perms(CONTROLLER_EXTRA),
        "auditor": view_all,
        "admin": list(Permission.objects.filter(content_type__app_label__in=APPS + ("auth",))),
    }
    for name, permissions in table.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.set(permissions)


class Migration(migrations.Migration):
    dependencies = [
        ("exceptions_queue", "0002_queue_work"),
        ("billing_sync", "0004_source_systems_callbacks"),
        ("ledger", "0007_entity_access"),
        ("audit", "0002_append_only"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_roles, migrations.RunPython.noop)]
