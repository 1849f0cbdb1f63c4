"""The correlation id of the work in progress (request, task or command), kept in a context variable: set
by the middleware for requests and by tasks from the event they process, read by logging, audit entries and
journal creation, so that one id ties a request to everything it caused."""
import contextvars
import uuid
from contextlib import contextmanager

_correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)


def new_id() -> str:
    return uuid.uuid4().hex


def get() -> str | None:
    return _correlation_id.get()


def get_or_new() -> str:
    value = _correlation_id.get()
    if value is None:
        value = new_id()
        _correlation_id.set(value)
    return value


def set(value: str | None) -> contextvars.Token:  # noqa: A001 - mirrors ContextVar.set
    return _correlation_id.set(value)


def reset(token: contextvars.Token) -> None:
    _correlation_id.reset(token)


@contextmanager
def bound(value: str | None):
    """Run a block (a task, a command) under the given correlation id, or a fresh one."""
    token = _correlation_id.set(value or new_id())
    try:
        yield _correlation_id.get()
    finally:
        _correlation_id.reset(token)
