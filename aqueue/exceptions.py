"""The errors aqueue raises.

Every error aqueue raises on purpose derives from `AqueueError`; where a builtin type says the
same thing, the error derives from it too, so `except TimeoutError` and `except ValueError` work.

    AqueueError
    ├── ConfigurationError (ValueError)
    │   ├── UnknownSetting
    │   └── MissingDependency (ImportError)
    ├── SerializationError (TypeError)
    │   └── MessageTooLarge (ValueError)
    ├── SignatureError (ValueError)
    ├── NotRegistered (LookupError)
    ├── BrokerError (ConnectionError)
    ├── ResultsDisabled
    ├── ResultTimeout (TimeoutError)
    ├── TaskRevoked
    ├── TaskError
    ├── MaxRetriesExceeded
    ├── SoftTimeLimitExceeded
    ├── TimeLimitExceeded (TimeoutError)
    ├── WorkerLostError
    ├── NoReply
    └── Retry                 (control flow, not an error: see its docstring)
"""

from __future__ import annotations

__all__ = [
    "AqueueError",
    "BrokerError",
    "ConfigurationError",
    "MaxRetriesExceeded",
    "MessageTooLarge",
    "MissingDependency",
    "NoReply",
    "NotRegistered",
    "ResultTimeout",
    "ResultsDisabled",
    "Retry",
    "SerializationError",
    "SignatureError",
    "SoftTimeLimitExceeded",
    "TaskError",
    "TaskRevoked",
    "TimeLimitExceeded",
    "UnknownSetting",
    "WorkerLostError",
]


class AqueueError(Exception):
    """The root of every error aqueue raises on purpose."""


class ConfigurationError(AqueueError, ValueError):
    """Raised when a setting, a URL or an app path is wrong; the message says how to fix it."""


class UnknownSetting(ConfigurationError, AttributeError):
    """Raised when a setting name is not one aqueue knows; the message names the closest one."""


class MissingDependency(ConfigurationError, ImportError):
    """Raised when a driver needs an optional package; the message names the pip line to run."""


class SerializationError(AqueueError, TypeError):
    """Raised at `delay()` when an argument has a type the message codec does not carry."""


class MessageTooLarge(SerializationError, ValueError):
    """Raised at `delay()` when the encoded message is larger than `message_max_bytes`."""


class SignatureError(AqueueError, ValueError):
    """A message or result unsigned, tampered with, signed with an unknown key, or stale.

    Raised by `AsyncResult.get()` for a result that fails its check when `task_message_key`
    is set (see `aqueue.signing`); `reason` is also the dead-letter reason a worker gives a
    message that fails it: "unsigned", "bad-signature" or "stale".
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class NotRegistered(AqueueError, LookupError):
    """Raised when a task name is not registered on the app."""


class BrokerError(AqueueError, ConnectionError):
    """Raised when the broker or the result backend cannot be reached or refuses an operation."""


class ResultsDisabled(AqueueError):
    """Raised by `AsyncResult` methods when the app has no result backend to read from."""


class ResultTimeout(AqueueError, TimeoutError):
    """Raised by `AsyncResult.get(timeout=...)` when no result arrived in time."""


class TaskRevoked(AqueueError):
    """Raised by `AsyncResult.get()` when the task was revoked or expired before it ran."""


class TaskError(AqueueError):
    """Raised by `AsyncResult.get()` for a remote failure whose type is not a builtin exception.

    aqueue never imports a type named in a result: the remote type's name, its message and the
    formatted remote traceback are carried as data instead.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str | None = None) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback


class MaxRetriesExceeded(AqueueError):
    """Raised by `task.retry()` when the task has no retries left and no exception was given."""


class SoftTimeLimitExceeded(AqueueError):
    """Raised inside a coroutine task that ran past its `soft_time_limit`; it may clean up."""


class TimeLimitExceeded(AqueueError, TimeoutError):
    """The failure of a task that ran past its hard `time_limit` and was cancelled."""


class WorkerLostError(AqueueError):
    """The failure of a task whose worker, or whose child process, died while running it.

    A process task (`executor="process"`) fails with it when its child exits before replying.

    After `broker_max_deliveries` runs that each ended in a dead worker (a segfault,
    `os._exit`, the OOM killer), the message goes to the dead letters and this failure is its
    result, so that `get()` raises at once instead of waiting for a result that never comes.
    """


class NoReply(AqueueError):
    """Raised when no worker (or not every named one) replied to a command within the timeout."""


class Retry(AqueueError):
    """Raised by `task.retry()` to have the worker run the task again later.

    This is control flow, not an error: the worker catches it, stores the RETRY state and sends
    the task again with `retries + 1` after `countdown` seconds. Let it propagate out of the
    task; catching it (or a bare `except Exception` around `retry()`) cancels the retry.
    """

    def __init__(self, countdown: float, exc: Exception | None = None) -> None:
        super().__init__(f"retry in {countdown:g}s" + (f": {exc!r}" if exc else ""))
        self.countdown = countdown
        self.exc = exc
