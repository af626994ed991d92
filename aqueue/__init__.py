"""aqueue: an asyncio-native task queue with the Celery API you already know."""

from . import states as states
from ._version import __version__ as __version__
from .app import App as App
from .app import current_app as current_app
from .app import shared_task as shared_task
from .beat.schedules import crontab as crontab
from .canvas import Chain as Chain
from .canvas import Chord as Chord
from .canvas import Group as Group
from .canvas import GroupResult as GroupResult
from .canvas import Signature as Signature
from .canvas import WorkflowResult as WorkflowResult
from .canvas import chain as chain
from .canvas import chord as chord
from .canvas import group as group
from .canvas import signature as signature
from .config import Settings as Settings
from .drivers import register_backend as register_backend
from .drivers import register_broker as register_broker
from .drivers.base import Broker as Broker
from .drivers.base import Credit as Credit
from .drivers.base import DeadLetter as DeadLetter
from .drivers.base import DeadLetterStats as DeadLetterStats
from .drivers.base import Delayed as Delayed
from .drivers.base import Delivery as Delivery
from .drivers.base import ResultBackend as ResultBackend
from .drivers.base import StoredResult as StoredResult
from .eager import EagerResult as EagerResult
from .exceptions import AqueueError as AqueueError
from .exceptions import BrokerError as BrokerError
from .exceptions import ConfigurationError as ConfigurationError
from .exceptions import MaxRetriesExceeded as MaxRetriesExceeded
from .exceptions import MessageTooLarge as MessageTooLarge
from .exceptions import MissingDependency as MissingDependency
from .exceptions import NoReply as NoReply
from .exceptions import NotRegistered as NotRegistered
from .exceptions import ResultsDisabled as ResultsDisabled
from .exceptions import ResultTimeout as ResultTimeout
from .exceptions import Retry as Retry
from .exceptions import SerializationError as SerializationError
from .exceptions import SignatureError as SignatureError
from .exceptions import SoftTimeLimitExceeded as SoftTimeLimitExceeded
from .exceptions import TaskError as TaskError
from .exceptions import TaskRevoked as TaskRevoked
from .exceptions import TimeLimitExceeded as TimeLimitExceeded
from .exceptions import UnknownSetting as UnknownSetting
from .exceptions import WorkerLostError as WorkerLostError
from .hooks import TaskRun as TaskRun
from .hooks import WorkerContext as WorkerContext
from .hooks import worker_context as worker_context
from .message import DeadLetterReason as DeadLetterReason
from .message import OutgoingMessage as OutgoingMessage
from .result import AsyncResult as AsyncResult
from .result import TaskMeta as TaskMeta
from .sync import SyncResult as SyncResult
from .task import AsyncTask as AsyncTask
from .task import Request as Request
from .task import SyncTask as SyncTask
from .task import Task as Task
from .task import TaskOptions as TaskOptions
from .worker import Worker as Worker

__all__ = [
    "App",
    "AqueueError",
    "AsyncResult",
    "AsyncTask",
    "Broker",
    "BrokerError",
    "Chain",
    "Chord",
    "ConfigurationError",
    "Credit",
    "DeadLetter",
    "DeadLetterReason",
    "DeadLetterStats",
    "Delayed",
    "Delivery",
    "EagerResult",
    "Group",
    "GroupResult",
    "MaxRetriesExceeded",
    "MessageTooLarge",
    "MissingDependency",
    "NoReply",
    "NotRegistered",
    "OutgoingMessage",
    "Request",
    "ResultBackend",
    "ResultTimeout",
    "ResultsDisabled",
    "Retry",
    "SerializationError",
    "Settings",
    "Signature",
    "SignatureError",
    "SoftTimeLimitExceeded",
    "StoredResult",
    "SyncResult",
    "SyncTask",
    "Task",
    "TaskError",
    "TaskMeta",
    "TaskOptions",
    "TaskRevoked",
    "TaskRun",
    "TimeLimitExceeded",
    "UnknownSetting",
    "Worker",
    "WorkerContext",
    "WorkerLostError",
    "WorkflowResult",
    "__version__",
    "chain",
    "chord",
    "crontab",
    "current_app",
    "group",
    "register_backend",
    "register_broker",
    "shared_task",
    "signature",
    "states",
    "worker_context",
]
