"""API representations of approvals and exceptions, and the request bodies their actions take."""
from rest_framework import serializers

from exceptions_queue.models import Approval, ExceptionRecord
from ledger.money import fmt


class ApprovalSerializer(serializers.ModelSerializer):
    event = serializers.UUIDField(source="event_id", allow_null=True)
    journal = serializers.UUIDField(source="journal_id")
    entity = serializers.CharField(source="entity.code")
    amount = serializers.SerializerMethodField()
    requested_by = serializers.CharField(source="requested_by_label")
    decisions = serializers.SerializerMethodField()

    class Meta:
        model = Approval
        fields = ["id", "event", "journal", "kind", "document_id", "amount", "currency", "entity", "requested_by",
                  "required_approvals", "decisions", "status", "created_at", "decided_at"]

    def get_amount(self, approval) -> str:
        return fmt(approval.amount, approval.currency)

    def get_decisions(self, approval) -> list[dict]:
        return [{"user": d.user.get_username(), "decision": d.decision, "comment": d.comment, "at": d.at}
                for d in approval.decisions.all()]


class ExceptionSerializer(serializers.ModelSerializer):
    event = serializers.UUIDField(source="event_id", allow_null=True)
    journal = serializers.UUIDField(source="journal_id", allow_null=True)
    entity = serializers.CharField(source="entity_code")
    owner = serializers.SerializerMethodField()
    source = serializers.SerializerMethodField()

    class Meta:
        model = ExceptionRecord
        fields = ["id", "code", "message", "status", "process", "entity", "event", "journal", "source", "amount",
                  "owner", "dependency_key", "retry_count", "created_at", "updated_at", "resolved_at", "resolved_by",
                  "resolution"]

    def get_owner(self, exc) -> str | None:
        return exc.owner.get_username() if exc.owner_id else None

    def get_source(self, exc) -> dict | None:
        if not exc.event_id:
            return None
        return {"source_system": exc.event.source_system, "event_id": exc.event.event_id, "type": exc.event.type}


class CommentSerializer(serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class ResolveSerializer(serializers.Serializer):
    # Presence is checked by the service, which answers 422 with the field named (one rule, one place).
    resolution = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class AssignSerializer(serializers.Serializer):
    owner = serializers.CharField(required=False, max_length=150, help_text="Username; defaults to the caller.")
