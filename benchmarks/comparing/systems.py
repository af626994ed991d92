"""The systems compared, the event loop each runs on, and their virtual environments."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # benchmarks/
SCRIPT = HERE / "compare.py"  # what the child processes run (`--worker`, `--producer` ...)
REPO = HERE.parent
VENVS = HERE / ".venv-peers"
#: One environment per project, as each pins redis-py differently (arq <6, SAQ <8, taskiq-redis
#: >=8). hiredis goes into every one, so that every system parses replies the same way.
ENVS: dict[str, list[str]] = {
    # uvloop: aqueue's worker runs on it when it is installed (--aqueue-loop picks either).
    "aqueue": ["-e", f"{REPO}[redis,amqp]", "hiredis", "uvloop"],
    "arq": ["arq", "hiredis"],
    # SAQ imports typing_extensions without declaring it (saq 0.26).
    "saq": ["saq[redis,hiredis]", "typing_extensions"],
    # taskiq[uv] is uvloop, which `taskiq worker` installs as its loop when it is there.
    "taskiq": ["taskiq[uv]", "taskiq-redis", "taskiq-aio-pika", "hiredis"],
    # streaq speaks Redis through coredis, not redis-py.
    "streaq": ["streaq"],
    "docket": ["pydocket", "hiredis"],
}
SYSTEM_ENV = {
    "aqueue-redis": "aqueue",
    "aqueue-amqp": "aqueue",
    "arq": "arq",
    "saq": "saq",
    "taskiq-redis": "taskiq",
    "taskiq-aio-pika": "taskiq",
    "streaq": "streaq",
    "docket": "docket",
}
#: The event loop each peer's own worker command runs on, installed as its docs say:
#: `taskiq worker` picks uvloop when it is installed (taskiq[uv]); arq's, SAQ's, streaq's
#: (anyio, no backend option) and docket's (asyncio.run) run the stock asyncio loop.
#: aqueue runs on both (`--aqueue-loop`): `aqueue worker` picks uvloop when it is installed.
PEER_LOOP = {
    "arq": "asyncio",
    "saq": "asyncio",
    "taskiq-redis": "uvloop",
    "taskiq-aio-pika": "uvloop",
    "streaq": "asyncio",
    "docket": "asyncio",
}
#: The packages whose versions the report names, where an environment has them.
VERSIONED = [
    "aqueue-tasks",
    "arq",
    "saq",
    "taskiq",
    "taskiq-redis",
    "taskiq-aio-pika",
    "streaq",
    "pydocket",
    "uvloop",
    "redis",
    "coredis",
    "hiredis",
    "aio-pika",
    "aiormq",
    "msgpack",
    "anyio",
]

REDIS_SYSTEMS = ["aqueue-redis", "arq", "saq", "taskiq-redis", "streaq", "docket"]
AMQP_SYSTEMS = ["aqueue-amqp", "taskiq-aio-pika"]
ALL_SYSTEMS = REDIS_SYSTEMS + AMQP_SYSTEMS
#: The ones with a bulk enqueue API.
BULK_SYSTEMS = {"aqueue-redis", "aqueue-amqp", "streaq", "docket"}
LOOPS = ("uvloop", "asyncio")


def env_python(env: str) -> Path:
    return VENVS / env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_envs(argv: list[str], systems: list[str]) -> None:
    """Create/refresh the environments in benchmarks/.venv-peers, then re-execute in aqueue's.

    Only the environments of `systems` (and aqueue's, which runs this script) are prepared.
    """
    wanted_envs = {"aqueue", *(SYSTEM_ENV[system] for system in systems)}
    for env, packages in ENVS.items():
        if env not in wanted_envs:
            continue
        python = env_python(env)
        stamp = VENVS / env / ".bench-requirements"
        wanted = " ".join(packages)
        if python.exists() and stamp.exists() and stamp.read_text() == wanted:
            continue
        print(f"Preparing {VENVS / env} (once) ...", flush=True)
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENVS / env)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, *packages], check=True)
        stamp.write_text(wanted)
    python = env_python("aqueue")
    if Path(sys.prefix).resolve() != python.parent.parent.resolve():
        os.execv(str(python), [str(python), str(SCRIPT), *argv])


def versions_main() -> None:
    """`compare.py --versions`: this environment's versions of the packages that matter."""
    found = {}
    for name in VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    print("@@bench " + json.dumps(found), flush=True)


async def env_versions(envs: list[str]) -> dict[str, str]:
    """Each environment's versions of the packages that matter, as text."""
    found: dict[str, str] = {}
    for env in envs:
        process = await asyncio.create_subprocess_exec(
            str(env_python(env)),
            str(SCRIPT),
            "--versions",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        lines = [ln for ln in out.decode().splitlines() if ln.startswith("@@bench ")]
        listed = json.loads(lines[-1].removeprefix("@@bench ")) if lines else {}
        found[env] = ", ".join(f"{name} {version}" for name, version in listed.items())
    return found
