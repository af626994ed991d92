"""`aqueue check-config MODULE`: validate a configuration module without connecting."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import Settings
from ..drivers import create_backend, create_broker
from ..loader import import_from_cwd
from ..urls import redact

__all__ = ["add_commands"]


def add_commands(commands: Any) -> None:
    """Add `aqueue check-config` to the CLI's subparsers."""
    check = commands.add_parser("check-config", help="validate a configuration module")
    check.add_argument("module", help="the config module, e.g. aqueueconfig")
    check.add_argument("--namespace", help='read NAMESPACE_SETTING names, e.g. "AQUEUE"')
    check.set_defaults(run=_check_config)


def _check_config(args: argparse.Namespace) -> int:
    settings = Settings()
    with import_from_cwd():
        settings.from_object(args.module, namespace=args.namespace)
    for url in (settings.broker_url, settings.result_backend):
        if isinstance(url, str) and url not in ("disabled", "disabled://"):
            # Resolves the driver (and its optional dependency) without connecting.
            factory = create_broker if url is settings.broker_url else create_backend
            factory(url, {})
    print(f"{args.module}: configuration OK")
    for name, value in settings.as_dict().items():
        if value != getattr(Settings(), name):
            shown = redact(value) if isinstance(value, str) else repr(value)
            print(f"  {name} = {shown}")
    for name, why in sorted(settings.ignored.items()):
        print(f"  ignored: {name} ({why})")
    return 0
