"""A source system's webhook receiver, as Standard Webhooks tells receivers to behave.

It verifies every POST with `standardwebhooks.Webhook(secret).verify(body, headers)` (HMAC-SHA256 over
`webhook-id.webhook-timestamp.body`, timestamp within five minutes) and answers 204 when the signature
holds, 400 when it does not. Scripted faults (`server.faults.add("error_500")`, `error_503`,
`timeout_before`) answer the next request that way instead. Everything received is kept in `deliveries`.
"""
import threading
import time
from dataclasses import dataclass, field

from standardwebhooks import Webhook, WebhookVerificationError

from tests.standins.base import Standin, StandinHandler


@dataclass
class Received:
    path: str
    headers: dict
    body: bytes
    verified: bool
    error: str = ""
    payload: dict | None = field(default=None)


class WebhookReceiver(Standin):
    def __init__(self, secret: str, **kwargs):
        super().__init__(**kwargs)
        self.secret = secret
        self.deliveries: list[Received] = []
        self._lock = threading.Lock()

    def handle(self, handler: StandinHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in handler.headers.items()}
        try:
            payload = Webhook(self.secret).verify(body, headers)
            received = Received(handler.path, headers, body, True, payload=payload)
        except WebhookVerificationError as exc:
            received = Received(handler.path, headers, body, False, error=str(exc))
        with self._lock:
            self.deliveries.append(received)
        fault = self.faults.take()
        if fault in ("error_500", "error_503"):
            handler.send_json(int(fault[-3:]), {"error": "receiver unavailable"})
        elif fault == "timeout_before":
            time.sleep(self.slow_seconds)
            handler.drop_connection()
        elif received.verified:
            handler.send_response(204)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        else:
            handler.send_json(400, {"error": received.error})

    @property
    def verified(self) -> list[Received]:
        return [d for d in self.deliveries if d.verified]
