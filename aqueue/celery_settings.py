"""Celery's setting names: which aqueue implements, which it maps, and which it ignores (why).

A settings file written for Celery loads as it is (`app.config_from_object("celeryconfig")`,
or `"django.conf:settings", namespace="CELERY"`). Each of Celery's 222 setting names (those of
its configuration guide and of `celery.app.defaults`, Celery 5.6) is one of:

- **implemented**: an aqueue setting of the same name and meaning (`IMPLEMENTED`);
- **mapped**: read and turned into what it means for aqueue (`MAPPED`): another setting, a
  behaviour aqueue always has, or an error saying what to write instead (a setting whose silent
  omission would weaken security: `broker_use_ssl`, `security_key`, ...);
- **ignored**: accepted, and listed with the reason in one warning when a worker starts
  (`IGNORED`; `Settings.ignored` holds them).

Celery's old upper-case names (`CELERYD_CONCURRENCY`) are not read; their namespaced form is
(`CELERY_WORKER_CONCURRENCY` in a Django settings module with `namespace="CELERY"`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from .exceptions import ConfigurationError
from .formats import check_formats

__all__ = ["IGNORED", "IMPLEMENTED", "MAPPED", "Translation", "translate"]

#: Celery names that are aqueue settings with the same meaning (see `aqueue.Settings`).
IMPLEMENTED = frozenset(
    {
        "accept_content",
        "beat_schedule",
        "broker_transport_options",
        "broker_url",
        "enable_utc",
        "imports",
        "include",
        "result_backend",
        "result_backend_transport_options",
        "result_expires",
        "result_serializer",
        "task_always_eager",
        "task_annotations",
        "task_default_priority",
        "task_default_queue",
        "task_ignore_result",
        "task_routes",
        "task_serializer",
        "task_soft_time_limit",
        "task_time_limit",
        "task_track_started",
        "task_send_sent_event",
        "timezone",
        "worker_concurrency",
        "worker_hijack_root_logger",
        "worker_max_memory_per_child",
        "worker_max_tasks_per_child",
        "worker_send_task_events",
    }
)

#: What a mapped setting becomes: aqueue settings to set, or (a str) why this value is ignored.
Mapper = Callable[[str, Any], "dict[str, Any] | str"]


def _always(behaviour: str, *, unless: object = None) -> Mapper:
    """Map a setting aqueue always honours: nothing to set; the value `unless` is ignored."""

    def mapper(name: str, value: Any) -> dict[str, Any] | str:
        if unless is not None and value == unless:
            return f"{name}={value!r} cannot be had: {behaviour}"
        return {}

    mapper.__doc__ = behaviour
    return mapper


def _renamed(target: str) -> Mapper:
    def mapper(name: str, value: Any) -> dict[str, Any] | str:
        return {target: value}

    mapper.__doc__ = f"sets {target}"
    return mapper


def _refused_if_set(instead: str) -> Mapper:
    """Map a setting whose omission would weaken security: an error when it is set."""

    def mapper(name: str, value: Any) -> dict[str, Any] | str:
        if value:
            raise ConfigurationError(f"{name} is not supported by aqueue: {instead}")
        return {}

    mapper.__doc__ = f"an error when set: {instead}"
    return mapper


def _content(name: str, value: Any) -> dict[str, Any] | str:

    check_formats(name, value)
    return {}


_content.__doc__ = "checked as accept_content is; results are read in either format aqueue writes"


def _beat_scheduler(name: str, value: Any) -> dict[str, Any] | str:
    if isinstance(value, str) and value.startswith("django_celery_beat"):
        return {name: "django"}  # aqueue's database scheduler (aqueue.contrib.django.beat)
    if isinstance(value, str) and value.startswith("celery."):
        return (
            f"{value!r} is Celery's: aqueue's beat keeps its state in the broker "
            "(a database of entries of one's own: an aqueue.beat.Source)"
        )
    return {name: value}


_beat_scheduler.__doc__ = (
    "sets beat_scheduler ('default', 'django' or an aqueue.beat.Source); django_celery_beat's "
    "DatabaseScheduler means 'django', Celery's own schedulers are ignored"
)

_TLS = "TLS is chosen by the URL: write rediss:// or amqps:// (certificates are checked)"
_SIGNING = (
    "Celery's X.509 message signing is not implemented; aqueue signs every message with "
    "HMAC-SHA256 under task_message_key"
)

#: Celery names read and turned into their aqueue meaning.
MAPPED: dict[str, Mapper] = {
    "task_acks_late": _always(
        "aqueue always acknowledges a message after its task ran and its result was stored",
        unless=False,
    ),
    "task_acks_on_failure_or_timeout": _always(
        "a failed or timed-out task's message is acknowledged once its failure is stored",
        unless=False,
    ),
    "task_reject_on_worker_lost": _always(
        "a dead worker's messages are redelivered, up to broker_max_deliveries runs"
    ),
    "worker_deduplicate_successful_tasks": _always(
        "a redelivered message whose result is stored is acknowledged, not run again"
    ),
    "task_create_missing_queues": _always("queues are created on first use", unless=False),
    "task_remote_tracebacks": _always(
        "failures always keep the remote traceback (get() attaches it as a note)"
    ),
    "result_persistent": _always(
        "SQLite and Redis results are durable; rpc:// results are not", unless=False
    ),
    "worker_soft_shutdown_timeout": _renamed("worker_shutdown_timeout"),
    "beat_scheduler": _beat_scheduler,
    "result_accept_content": _content,
    "broker_use_ssl": _refused_if_set(_TLS),
    "redis_backend_use_ssl": _refused_if_set(_TLS),
    "security_key": _refused_if_set(_SIGNING),
    "security_certificate": _refused_if_set(_SIGNING),
    "security_cert_store": _refused_if_set(_SIGNING),
}


def _each(reason: str, *names: str) -> dict[str, str]:
    return dict.fromkeys(names, reason)


_PROCESS = "run the worker under a process supervisor (systemd, a container) for this"
_NO_BACKEND = "aqueue has no such result backend (results: the broker's store, Redis, rpc://)"
_URL = "connection details go in the URL and broker_transport_options"

#: Celery names accepted and ignored, each with the reason the start-up warning gives.
IGNORED: dict[str, str] = {
    **_each(
        "prefetch follows the worker's free slots (worker_concurrency)",
        "worker_prefetch_multiplier",
        "worker_disable_prefetch",
        "worker_enable_prefetch_count_reduction",
    ),
    **_each(
        "workers reconnect with backoff while running; at start-up a broker that does not "
        "answer is a one-line error",
        "broker_connection_retry_on_startup",
        "broker_connection_retry",
        "broker_connection_max_retries",
        "broker_channel_error_retry",
        "broker_connection_timeout",
        "broker_failover_strategy",
        "worker_cancel_long_running_tasks_on_connection_loss",
    ),
    **_each(
        _URL,
        "broker_transport",
        "broker_host",
        "broker_port",
        "broker_user",
        "broker_password",
        "broker_vhost",
        "broker_login_method",
        "broker_read_url",
        "broker_write_url",
        "broker_heartbeat",
        "broker_heartbeat_checkrate",
        "broker_pool_limit",
        "broker_pool_acquire_timeout",
        "redis_backend_health_check_interval",
        "redis_backend_credential_provider",
        "redis_client_name",
        "redis_db",
        "redis_host",
        "redis_password",
        "redis_port",
        "redis_username",
        "redis_max_connections",
        "redis_retry_on_timeout",
        "redis_socket_connect_timeout",
        "redis_socket_keepalive",
        "redis_socket_timeout",
        "result_backend_always_retry",
        "result_backend_base_sleep_between_retries_ms",
        "result_backend_max_retries",
        "result_backend_max_sleep_between_retries_ms",
        "result_backend_thread_safe",
    ),
    **_each(
        "RabbitMQ queues use aqueue's direct exchange; -Q picks the queues a worker consumes "
        "(quorum queues: broker_transport_options={'queue_type': 'quorum'})",
        "task_queues",
        "task_default_exchange",
        "task_default_exchange_type",
        "task_default_routing_key",
        "task_default_delivery_mode",
        "task_default_queue_type",
        "task_create_missing_queue_type",
        "task_create_missing_queue_exchange_type",
        "broker_native_delayed_delivery_queue_type",
        "worker_detect_quorum_queues",
        "worker_direct",
        "result_exchange",
        "result_exchange_type",
    ),
    **_each(
        "priorities are 0-9 on every broker",
        "task_queue_max_priority",
        "task_inherit_parent_priority",
    ),
    **_each("aqueue does not compress messages", "task_compression", "result_compression"),
    **_each("aqueue has its own message envelope", "task_protocol"),
    **_each(
        "a publish waits for the broker (confirms on RabbitMQ) and raises if it fails",
        "task_publish_retry",
        "task_publish_retry_policy",
    ),
    **_each(
        "rate limits are per task (rate_limit=, or task_annotations {'*': ...})",
        "task_default_rate_limit",
        "worker_disable_rate_limits",
    ),
    **_each(
        "eager results live in the caller; get() raises a failure",
        "task_eager_propagates",
        "task_store_eager_result",
    ),
    **_each(
        "an ignored result is not stored, failures included",
        "task_store_errors_even_if_ignored",
    ),
    **_each(
        "stored results hold the task name, retries and date done, never the arguments",
        "result_extended",
    ),
    **_each("aqueue keeps no client-side result cache", "result_cache_max"),
    **_each(
        "chords count their header atomically in the result store: no join polling",
        "result_chord_join_timeout",
        "result_chord_retry_interval",
        "task_allow_error_cb_on_chord_header",
    ),
    **_each(
        "acknowledgement follows the stored outcome (see task_acks_on_failure_or_timeout)",
        "task_acks_on_failure",
        "task_acks_on_timeout",
    ),
    **_each(
        "task events travel on the broker's mailbox (-E, `aqueue events`): no event exchange",
        "event_exchange",
        "event_queue_durable",
        "event_queue_exclusive",
        "event_queue_expires",
        "event_queue_prefix",
        "event_queue_ttl",
        "event_serializer",
    ),
    **_each(
        "the control plane uses the broker's mailbox, always on",
        "worker_enable_control_server",
        "control_exchange",
        "control_queue_durable",
        "control_queue_exclusive",
        "control_queue_expires",
        "control_queue_ttl",
    ),
    **_each(
        "one event loop runs coroutines, a thread pool def tasks (--threads) and "
        'executor="process" tasks a process pool (--processes)',
        "worker_pool",
        "worker_pool_putlocks",
        "worker_pool_restarts",
        "worker_autoscaler",
        "worker_consumer",
        "worker_agent",
        "worker_timer",
        "worker_timer_precision",
        "worker_proc_alive_timeout",
        "worker_lost_wait",
        "worker_eta_task_limit",
        "worker_enable_soft_shutdown_on_idle",
    ),
    **_each(
        "revocations are kept in the broker, not a local file",
        "worker_state_db",
    ),
    **_each(
        "aqueue logs through the logging module: configure it there (`-l` sets the level)",
        "worker_log_color",
        "worker_log_format",
        "worker_task_log_format",
        "worker_redirect_stdouts",
        "worker_redirect_stdouts_level",
    ),
    **_each(
        _PROCESS,
        "worker_logfile",
        "worker_pidfile",
        "worker_uid",
        "worker_gid",
        "worker_umask",
        "worker_executable",
        "beat_logfile",
        "beat_pidfile",
        "beat_uid",
        "beat_gid",
        "beat_umask",
        "beat_executable",
        "events_logfile",
        "events_pidfile",
        "events_uid",
        "events_gid",
        "events_umask",
        "events_executable",
    ),
    **_each(
        "beat keeps its state in the broker and sleeps until the next entry is due "
        "(missed runs: beat_catch_up)",
        "beat_schedule_filename",
        "beat_sync_every",
        "beat_max_loop_interval",
        "beat_cron_starting_deadline",
    ),
    **_each(
        "aqueue's signing (task_message_key) has no digest or key password to choose",
        "security_digest",
        "security_key_password",
    ),
    **_each(
        _NO_BACKEND,
        "override_backends",
        "cache_backend",
        "cache_backend_options",
        "database_url",
        "database_create_tables_at_setup",
        "database_engine_callback",
        "database_engine_options",
        "database_short_lived_sessions",
        "database_table_names",
        "database_table_schemas",
        "mongodb_backend_settings",
        "couchbase_backend_settings",
        "arangodb_backend_settings",
        "cassandra_auth_kwargs",
        "cassandra_auth_provider",
        "cassandra_bundle_path",
        "cassandra_secure_bundle_path",
        "cassandra_entry_ttl",
        "cassandra_keyspace",
        "cassandra_options",
        "cassandra_port",
        "cassandra_read_consistency",
        "cassandra_servers",
        "cassandra_table",
        "cassandra_write_consistency",
        "s3_access_key_id",
        "s3_secret_access_key",
        "s3_bucket",
        "s3_base_path",
        "s3_endpoint_url",
        "s3_region",
        "azureblockblob_base_path",
        "azureblockblob_connection_timeout",
        "azureblockblob_container_name",
        "azureblockblob_read_timeout",
        "azureblockblob_retry_increment_base",
        "azureblockblob_retry_initial_backoff_sec",
        "azureblockblob_retry_max_attempts",
        "gcs_bucket",
        "gcs_project",
        "gcs_base_path",
        "gcs_ttl",
        "elasticsearch_retry_on_timeout",
        "elasticsearch_max_retries",
        "elasticsearch_timeout",
        "elasticsearch_save_meta_as_text",
        "cosmosdbsql_database_name",
        "cosmosdbsql_collection_name",
        "cosmosdbsql_consistency_level",
        "cosmosdbsql_max_retry_attempts",
        "cosmosdbsql_max_retry_wait_time",
    ),
}

#: Every Celery setting name.
CELERY_NAMES = IMPLEMENTED | MAPPED.keys() | IGNORED.keys()


@dataclass
class Translation:
    """Settings read from a Celery-style source, split by what aqueue does with each."""

    #: aqueue settings to set.
    settings: dict[str, Any] = field(default_factory=dict)
    #: Celery names accepted and ignored, with the reason.
    ignored: dict[str, str] = field(default_factory=dict)
    #: Names neither aqueue nor Celery knows.
    unknown: list[str] = field(default_factory=list)


def translate(found: Mapping[str, Any], known: Collection[str]) -> Translation:
    """Sort `found` (lowercase names) into aqueue settings, ignored names and unknown names.

    `known` is aqueue's own setting names: those are taken as they are. A mapped setting may
    raise `ConfigurationError` for a value aqueue refuses.
    """
    out = Translation()
    for name, value in found.items():
        if name in MAPPED:  # before `known`: beat_scheduler is both
            mapped = MAPPED[name](name, value)
            if isinstance(mapped, str):
                out.ignored[name] = mapped
            else:
                out.settings.update(mapped)
        elif name in known:
            out.settings[name] = value
        elif name in IGNORED:
            out.ignored[name] = IGNORED[name]
        else:
            out.unknown.append(name)
    return out


def describe(name: str) -> tuple[str, str]:
    """Return how aqueue treats a Celery setting ("implemented", "mapped", "ignored") and why."""
    if name in IMPLEMENTED:
        return "implemented", "the same setting"
    if name in MAPPED:
        return "mapped", MAPPED[name].__doc__ or ""
    return "ignored", IGNORED[name]
