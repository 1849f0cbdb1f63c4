"""Where archived data went: an event whose month was archived by retention (its row detached with its
partition, its identity kept in the key table) is answered with the pack that holds its bytes."""
import datetime

from audit.models import PartitionArchive
from billing_sync.models import EventKey


def event_archive(event_id) -> dict | None:
    """The archive holding event `event_id` (pack, location, SHA-256, month), or None if it was never archived."""
    key = EventKey.objects.filter(pk=event_id).values("id", "source_system", "event_id", "received_at").first()
    if key is None:
        return None
    month = key["received_at"].astimezone(datetime.UTC).date().replace(day=1)
    archive = PartitionArchive.objects.filter(table="billing_sync_event", month=month).first()
    if archive is None:
        return None
    return {
        "event": {"id": str(key["id"]), "source_system": key["source_system"], "event_id": key["event_id"],
                  "received_at": key["received_at"].isoformat().replace("+00:00", "Z")},
        "archive": {"pack": archive.pack_name, "location": archive.location, "sha256": archive.pack_sha256,
                    "month": f"{archive.month:%Y-%m}", "partition": archive.partition, "rows": archive.rows,
                    "archived_at": archive.archived_at.isoformat().replace("+00:00", "Z")},
    }
