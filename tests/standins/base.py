"""A small threaded HTTP server for vendor stand-ins, with scripted faults.

Each stand-in follows its vendor's documented contract (paths, auth, bodies, error shapes). Tests
script faults with `server.faults.add(kind, times)`; kinds every stand-in understands:
`rate_limit` (429 + Retry-After: `server.retry_after`, "1" by default), `error_500`, `error_503`,
`timeout_before` (sleep, nothing stored), `commit_then_timeout` (store, then answer too late),
`commit_then_502` (store, answer 502), `commit_then_reset` (store, then drop the connection without an
answer). `server.arrivals` stamps every request (monotonic time, method, path), `server.rate_limited_at` every
429. `server.faults` is consumed by writes (posting); `server.read_faults` by the read-back requests
(lists, reads, queries), with the kinds that happen before an answer (`rate_limit`, `error_500`,
`error_503`, `timeout_before`). `latency` is slept before every request (a page, for read-back).
"""
import json
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

POLL_INTERVAL = 0.02  # seconds


class StandinServer(ThreadingHTTPServer):
    # socketserver listens with a backlog of 5; a vendor behind a load balancer accepts far more. With
    # more requests in flight than that (a drain keeps 16), the kernel drops the extra SYNs and the client
    # resends after 1 s: past the tests' 0.5 s connect timeout, a "connect timeout" no real ERP would give.
    request_queue_size = 128


class Faults:
    def __init__(self):
        self._queue: deque[str] = deque()
        self._lock = threading.Lock()

    def add(self, kind: str, times: int = 1) -> None:
        with self._lock:
            self._queue.extend([kind] * times)

    def take(self) -> str | None:
        with self._lock:
            return self._queue.popleft() if self._queue else None

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()


class StandinHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Standin/1.0"
    # The handler writes the headers and the body in two sends: with Nagle's algorithm on, the body waits
    # for the client's delayed ACK (about 40 ms on Linux), which would dwarf the latency a test sets.
    disable_nagle_algorithm = True

    def log_message(self, *args):  # quiet
        pass

    @property
    def app(self):
        return self.server.app

    def body_json(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if len(raw) < length:
            # The client went away mid-body (a worker SIGKILLed while sending): as a vendor's server, read nothing
            # of it and answer nothing; the connection is closed. Not a request the ERP received.
            raise ConnectionResetError(f"client disconnected after {len(raw)} of {length} body bytes")
        return json.loads(raw) if raw else None

    def send_json(self, status: int, body, headers: dict | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def drop_connection(self) -> None:
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass
        self.close_connection = True
        self.connection.close()

    def _dispatch(self, method: str):
        self.app.requests.append((method, self.path))
        self.app.arrivals.append((time.monotonic(), method, self.path))
        if self.app.latency:
            time.sleep(self.app.latency)
        self.app.handle(self, method)

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def do_DELETE(self):
        self._dispatch("DELETE")


class Standin:
    """Base of a vendor stand-in: `start()` binds 127.0.0.1 on a free port; `url` is its base URL."""

    def __init__(self, *, latency: float = 0.0, slow_seconds: float = 2.0):
        self.faults = Faults()
        self.read_faults = Faults()
        self.retry_after = "1"
        self.latency = latency
        self.slow_seconds = slow_seconds
        self.requests: list = []
        self.arrivals: list = []  # (time.monotonic() on arrival, method, path): rates and pauses, for tests
        self.rate_limited_at: list = []  # time.monotonic() of each scripted 429 answer
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> "Standin":
        server = StandinServer(("127.0.0.1", 0), StandinHandler)
        server.daemon_threads = True
        server.app = self
        self._server = server
        # A short poll: stop() waits for the serving loop's next poll (0.5 s by default), after every test.
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def handle(self, handler: StandinHandler, method: str) -> None:
        raise NotImplementedError

    # Faults that happen before the vendor logic: return True when the request was answered.
    def pre_fault(self, handler: StandinHandler, fault: str | None, error_body) -> bool:
        if fault == "rate_limit":
            handler.body_json()
            self.rate_limited_at.append(time.monotonic())
            handler.send_json(429, error_body(429, "Too many requests"), {"Retry-After": self.retry_after})
            return True
        if fault in ("error_500", "error_503"):
            handler.body_json()
            status = int(fault[-3:])
            handler.send_json(status, error_body(status, "Internal server error"))
            return True
        if fault == "timeout_before":
            handler.body_json()
            time.sleep(self.slow_seconds)
            handler.drop_connection()
            return True
        return False

    def pre_read_fault(self, handler: StandinHandler, error_body) -> bool:
        """A scripted read-back fault (`read_faults`), answered before the vendor logic: True if answered."""
        return self.pre_fault(handler, self.read_faults.take(), error_body)

    # Faults that happen after the vendor stored the document.
    def post_fault(self, handler: StandinHandler, fault: str | None, error_body) -> bool:
        if fault == "commit_then_timeout":
            time.sleep(self.slow_seconds)
            handler.drop_connection()
            return True
        if fault == "commit_then_502":
            handler.send_json(502, error_body(502, "Bad gateway"))
            return True
        if fault == "commit_then_reset":
            handler.drop_connection()
            return True
        return False
