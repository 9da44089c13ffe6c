"""Why the server refuses a request: one exception per reason, mapped to a status by each front end."""

from __future__ import annotations


class InputError(ValueError):
    """A request field is invalid; the message starts with the field name."""


class PayloadTooLargeError(InputError):
    """A body, upload or mesh exceeds the server's configured limit."""


class QueueFullError(Exception):
    """The queue has no room for the request; the caller should retry later."""


class StreamLimitError(QueueFullError):
    """As many live streams are open as the server allows; the caller should retry later."""


class DeadlineExceededError(Exception):
    """The request's deadline passed before its work started."""


class ModelUnavailableError(Exception):
    """The model an endpoint needs is not loaded; the message says why."""


class ShuttingDownError(Exception):
    """The server is stopping and takes no new work."""
