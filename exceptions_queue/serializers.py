"""API representations of approvals and exceptions, and the request bodies their actions take."""
from rest_framework import serializers

from exceptions_queue import sla
from exceptions_queue.models import Approval, ExceptionComment, ExceptionRecord
from config.money import fmt


class ApprovalSerializer(serializers.ModelSerializer):
    event = serializers.UUIDField(source="event_id", allow_null=True)
    journal = serializers.UUIDField(source="journal_id", allow_null=True)
    entity = serializers.CharField(source="entity.code")
    amount = serializers.SerializerMethodField()
    requested_by = serializers.CharField(source="requested_by_label")
    decisions = serializers.SerializerMethodField()

    class Meta:
        model = Approval
        fields = ["id", "event", "journal", "subject", "kind", "document_id", "amount", "currency", "entity", "requested_by",
                  "reason", "required_approvals", "decisions", "status", "created_at", "decided_at"]

    def get_amount(self, approval) -> str:
        return fmt(approval.amount, approval.currency)

    def get_decisions(self, approval) -> list[dict]:
        return [{"user": d.user.get_username(), "decision": d.decision, "comment": d.comment, "at": d.at}
                for d in approval.decisions.all()]


class ExceptionCommentOutSerializer(serializers.ModelSerializer):
    author = serializers.CharField(source="author.username")

    class Meta:
        model = ExceptionComment
        fields = ["id", "author", "body", "created_at"]


class ExceptionSerializer(serializers.ModelSerializer):
    event = serializers.UUIDField(source="event_id", allow_null=True)
    journal = serializers.UUIDField(source="journal_id", allow_null=True)
    entity = serializers.CharField(source="entity_code")
    owner = serializers.SerializerMethodField()
    source = serializers.SerializerMethodField()
    age = serializers.SerializerMethodField()
    comments = ExceptionCommentOutSerializer(many=True, read_only=True)

    class Meta:
        model = ExceptionRecord
        fields = ["id", "code", "message", "status", "process", "entity", "event", "journal", "source", "source_ref",
                  "amount", "owner", "dependency_key", "retry_count", "escalation_level", "escalated_at",
                  "escalated_by", "age", "created_at", "updated_at", "resolved_at", "resolved_by", "resolution",
                  "comments"]

    def get_owner(self, exc) -> str | None:
        return exc.owner.get_username() if exc.owner_id else None

    def get_age(self, exc) -> dict:
        age = sla.age_of(exc)
        return {"bucket": age.bucket, "sla_hours": age.sla_hours, "level": age.level, "late": age.late}

    def get_source(self, exc) -> dict | None:
        if not exc.event_id:
            return None
        return {"source_system": exc.event.source_system, "event_id": exc.event.event_id, "type": exc.event.type}


class CommentSerializer(serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class ResolveSerializer(serializers.Serializer):
    # Presence is checked by the service, which answers 422 with the field named (one rule, one place).
    resolution = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class ExceptionCommentSerializer(serializers.Serializer):
    # Presence is checked by the service (422 naming the field), as for a resolution.
    body = serializers.CharField(max_length=5000, required=False, allow_blank=True, default="")


class EscalateSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class AssignSerializer(serializers.Serializer):
    owner = serializers.CharField(required=False, max_length=150, help_text="Username; defaults to the caller.")
