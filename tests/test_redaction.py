"""No password in any repr or str: settings, URLs, brokers, backends, apps, errors, the CLI.

Every object below is made with URLs that carry one sentinel password; the test greps the repr
and the str of each one, and of every error it can cause, for it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from aqueue import App, BrokerError, ConfigurationError, Worker
from aqueue.cli import main
from aqueue.config import Settings
from aqueue.drivers import create_backend, create_broker
from aqueue.drivers.amqp.connection import parse_amqp_url
from aqueue.drivers.redis.client import parse_redis_url
from aqueue.urls import redact, redact_text, scheme_of

SECRET = "s3cretPW"
REDIS = f"redis://:{SECRET}@127.0.0.1:1/0"  # port 1: nothing listens, refused at once
AMQP = f"amqp://guest:{SECRET}@127.0.0.1:1/"


def shown(*objects: object) -> list[str]:
    """The repr and the str of each object."""
    return [text for obj in objects for text in (repr(obj), str(obj))]


def assert_clean(texts: list[str]) -> None:
    leaks = [text for text in texts if SECRET in text]
    assert not leaks, leaks
    assert texts


def test_redact_text_hides_every_url_password_in_free_text() -> None:
    text = f"a {REDIS} b 'amqp://u:p@ss:{SECRET}@h//','x' rediss://:{SECRET}@h:6380"
    assert redact_text(text) == "a redis://:***@127.0.0.1:1/0 b 'amqp://u:***@h//','x' " + (
        "rediss://:***@h:6380"
    )
    assert redact_text("no url, user@host:22") == "no url, user@host:22"
    assert redact_text("redis://h:6379/0@x") == "redis://h:6379/0@x"  # no user part


def test_settings_and_the_app_show_no_password() -> None:
    # Before: the dataclass repr of app.conf printed the broker URL as it was given.
    app = App("x", broker=REDIS, backend=AMQP.replace("amqp", "rpc", 1), set_as_current=False)
    settings = Settings()
    settings.update(broker_url=REDIS, result_backend=REDIS)
    assert_clean(shown(app, app.conf, settings, Worker(app)))
    assert "redis://:***@127.0.0.1:1/0" in repr(app.conf)
    assert repr(app.conf).startswith("Settings(broker_url=")
    assert dataclasses.is_dataclass(settings)


@pytest.mark.parametrize(
    "url", [REDIS, REDIS.replace("redis", "rediss", 1), AMQP, AMQP.replace("amqp", "rpc", 1)]
)
def test_brokers_backends_and_their_settings_show_no_password(url: str) -> None:
    objects: list[Any] = []
    if not url.startswith("rpc"):
        objects.append(create_broker(url, {}))
    if not url.startswith("amqp"):
        objects.append(create_backend(url, {}))
    if url.startswith("redis"):
        objects.append(parse_redis_url(url, {}))
    else:
        objects.append(parse_amqp_url(url.replace("rpc", "amqp", 1)))
    assert_clean(shown(*objects))


@pytest.mark.parametrize(
    "url",
    [
        f"{REDIS}?bogus=1",
        f"redis://:{SECRET}@h/notanumber",
        f"{AMQP}?bogus=1",
        f"{AMQP}?heartbeat=x",
        f"nosuch://u:{SECRET}@h/0",
        f"redis://:{SECRET}@[::1/0",
    ],
)
def test_configuration_errors_show_no_password(url: str) -> None:
    with pytest.raises((ConfigurationError, ValueError)) as info:
        create_broker(url, {})
    assert_clean(shown(info.value, *info.value.args))


def test_url_helpers_show_no_password() -> None:
    assert_clean([redact(REDIS), redact(AMQP), redact(f"redis://:{SECRET}@[::1/0")])
    for not_a_url in (f"u:{SECRET}@h", f"redis:/:{SECRET}@h/0"):  # a slash short
        with pytest.raises(ConfigurationError) as info:
            scheme_of(not_a_url)
        assert_clean(shown(info.value))
    assert redact(f"redis:/:{SECRET}@h/0") == "redis:***@h/0"


@pytest.mark.parametrize("url", [REDIS, AMQP])
async def test_connection_errors_show_no_password(url: str) -> None:
    app = App("x", broker=url, set_as_current=False)
    try:
        with pytest.raises(BrokerError) as info:
            await app.broker()
    finally:
        await app.close()
    error = info.value
    assert_clean(shown(error, *error.args, error.__cause__, error.__context__))


@pytest.mark.parametrize(
    "argv",
    [
        ["worker", "x:app", "--brokr", REDIS],  # a mistyped flag: argparse echoes what follows
        ["worker", "--brokr", REDIS, "x:app"],
        ["worker", "-l", REDIS, "x:app"],  # an invalid choice is echoed too
        ["worker", "-c", REDIS, "x:app"],  # and a value of the wrong type
        [REDIS],  # an unknown command
    ],
)
def test_cli_argument_errors_show_no_password(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert_clean([captured.out, captured.err])
    if REDIS in " ".join(argv[2:]) and "--brokr" in argv[2:]:
        assert "unrecognized arguments: --brokr redis://:***@127.0.0.1:1/0" in captured.err
