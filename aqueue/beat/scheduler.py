"""The beat: sends each entry's runs at their due times, once across every beat alive.

Each beat computes the due times from the schedules (never "now + interval"), sleeps until
the first one, *claims* `(entry, due time)` with the broker's atomic primitive
(`Mailbox.claim`: SET NX on Redis, a unique row on SQLite, an exclusive queue on RabbitMQ)
and sends the run only if the claim was its own. So any number of beats can run: every run is
sent once, and while one beat lives, none is skipped.

After each send the beat marks the run sent (`beat.sent.<entry>.<due ms>`, for as long as
its claim lives) and records the due time (`beat.last.<entry>` in the mailbox settings);
a beat that starts reads it and treats the runs due since as missed: `beat_catch_up` says
whether it sends one of them ("one", the latest), all of them, or none. A beat woken late (a
blocked loop) applies the same rule to the runs it overslept.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from .. import codec, sending
from ..exceptions import AqueueError, ConfigurationError, NotRegistered
from .clock import Clock, SystemClock
from .entries import Entry
from .housekeeping import HOUSEKEEPING, housekeeping_entries, run_housekeeping
from .schedules import app_timezone, every
from .source import Source, make_source

if TYPE_CHECKING:
    from ..drivers.base import Mailbox
    from ..interfaces import AppLike

__all__ = ["CLAIM_PREFIX", "LAST_PREFIX", "Beat"]

logger = logging.getLogger("aqueue.beat")

CLAIM_PREFIX = "beat.claim."
LAST_PREFIX = "beat.last."
SENT_PREFIX = "beat.sent."
#: A run this late is "missed" (what `beat_catch_up` decides about), not on time.
GRACE = 1.0
#: The most missed runs of one entry sent at once under beat_catch_up="all".
MAX_CATCH_UP = 1000
#: Claims live at least this long: beats whose clocks differ by less never send a run twice.
MIN_CLAIM_TTL = 10.0
#: Compact the stored settings after this many sends (RabbitMQ keeps a log of changes; SQLite
#: drops expired claims when it reads them).
COMPACT_EVERY = 200
#: The longest a losing beat waits for the winner to record a run before it takes the run over.
TAKEOVER_MAX = 5.0


def takeover_after(period: float) -> float:
    """Seconds after a lost claim when the losers check that the winner sent the run."""
    return min(period / 2, TAKEOVER_MAX)


class Beat:
    """One beat process's scheduler: `await Beat(app).run()` (what `aqueue beat` runs)."""

    def __init__(
        self,
        app: AppLike,
        *,
        clock: Clock | None = None,
        source: Source | None = None,
        catch_up: str | None = None,
    ) -> None:
        self.app = app
        self.clock: Clock = clock or SystemClock()
        self.source = source or make_source(app)
        self.catch_up = catch_up or app.conf.beat_catch_up
        if self.catch_up not in ("one", "all", "none"):
            raise ConfigurationError("beat_catch_up must be 'one', 'all' or 'none'")
        self.tz: dt.tzinfo = app_timezone(app.conf.timezone, app.conf.enable_utc)
        self.entries: dict[str, Entry] = {}
        self.cursors: dict[str, float] = {}  # the last due time handled, per entry
        self.sent = 0
        #: How many times the entries were loaded again after an edit (`reloaded` waits on it).
        self.reloads = 0
        self._reloaded = anyio.Event()
        self._wake = anyio.Event()
        self._stale = False
        self._mailbox: Mailbox | None = None
        #: Runs another beat claimed: (entry, due time) -> when to check it recorded them.
        self._claimed_elsewhere: dict[tuple[str, float], float] = {}

    # -- start -------------------------------------------------------------------------------

    async def load(self) -> dict[str, Entry]:
        """Load and check the entries, with the built-in ones; set their cursors.

        A task unknown to the app is an error; each cursor is the last run recorded in the
        broker (runs due since then were missed), or now.
        """
        entries = await self.source.load()
        for entry in entries.values():
            if entry.source == "settings" and entry.task not in self.app.tasks:
                raise NotRegistered(
                    f"beat entry {entry.name!r}: no task named {entry.task!r} is registered "
                    "on this app; import the module that defines it"
                )
        entries.update(await housekeeping_entries(self.app))
        mailbox = await self._mailboxed()
        last = await mailbox.items(LAST_PREFIX)
        now = self.clock.now()
        self.cursors = {}
        for name in entries:
            recorded = _float(last.get(LAST_PREFIX + name))
            self.cursors[name] = recorded if recorded is not None and recorded < now else now
        self.entries = entries
        return entries

    async def _mailboxed(self) -> Mailbox:
        if self._mailbox is None:
            self._mailbox = (await self.app.broker()).mailbox()
        return self._mailbox

    def next_runs(self) -> dict[str, float | None]:
        """Return each entry's next due time (None: disabled), for the banner."""
        return {
            name: entry.schedule.next_after(self.cursors[name], self.tz) if entry.enabled else None
            for name, entry in self.entries.items()
        }

    # -- run ---------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[Beat] = anyio.TASK_STATUS_IGNORED) -> None:
        """Send the entries' runs until cancelled; edits reach it through `source.changes()`."""
        if not self.entries:
            await self.load()
        async with anyio.create_task_group() as group:
            await group.start(self._watch)
            task_status.started(self)
            await self._loop()

    async def _watch(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with self.source.changes() as changes:
            task_status.started()
            async for _ in changes:
                self._stale = True
                self._wake.set()

    async def _loop(self) -> None:
        while True:
            self._wake = anyio.Event()
            if self._stale:
                self._stale = False
                await self._reload()
            now = self.clock.now()
            await self._check_claimed_elsewhere(now)
            for entry in list(self.entries.values()):
                if entry.enabled:
                    await self._tick(entry, now)
            upcoming = [
                entry.schedule.next_after(self.cursors[name], self.tz)
                for name, entry in self.entries.items()
                if entry.enabled
            ]
            upcoming.extend(self._claimed_elsewhere.values())
            await self.clock.sleep_until(min(upcoming, default=math.inf), self._wake)

    async def _reload(self) -> None:
        try:
            fresh = await self.source.load()
        except AqueueError as exc:
            logger.error("Could not load the beat entries again (%s); keeping the old ones", exc)
            return
        fresh.update(await housekeeping_entries(self.app))
        self._apply(fresh)

    def _apply(self, fresh: dict[str, Entry]) -> None:
        now = self.clock.now()
        for name, entry in fresh.items():
            old = self.entries.get(name)
            if old is None or not old.same_timing(entry):
                self.cursors[name] = now  # new, rescheduled or enabled again: from now on
                logger.info("Beat entry %s: %s", name, _describe(entry))
        for name in set(self.entries) - set(fresh):
            self.cursors.pop(name, None)
            logger.info("Beat entry %s: removed", name)
        self.entries = fresh
        self.reloads += 1
        self._reloaded.set()
        self._reloaded = anyio.Event()

    async def reloaded(self, count: int) -> None:
        """Wait until the entries were loaded again `count` times in all (for tests, tools)."""
        while self.reloads < count:
            await self._reloaded.wait()

    async def _tick(self, entry: Entry, now: float) -> None:
        pending = self._pending(entry, now)
        if not pending:
            return
        self.cursors[entry.name] = pending[-1]
        if self.catch_up == "all":
            runs = pending[-MAX_CATCH_UP:]
        elif self.catch_up == "one":
            runs = pending[-1:]
        else:
            runs = [due for due in pending if now - due <= GRACE]
        for due in runs:
            await self._claim_and_send(entry, due, late=now - due > GRACE)

    def _pending(self, entry: Entry, now: float) -> list[float]:
        """Return the due times in (cursor, now]."""
        cursor = self.cursors[entry.name]
        if isinstance(entry.schedule, every):  # jump over what no policy would send
            cursor = max(cursor, now - (MAX_CATCH_UP + 1) * entry.schedule.seconds)
        due: list[float] = []
        following = entry.schedule.next_after(cursor, self.tz)
        while following <= now:
            due.append(following)
            if len(due) > 2 * MAX_CATCH_UP:
                del due[:MAX_CATCH_UP]
            following = entry.schedule.next_after(following, self.tz)
        return due

    async def _check_claimed_elsewhere(self, now: float) -> None:
        """Take over the runs whose winners did not mark them sent in time (killed, cut off).

        The winner claims `<run>.done` once the run is sent and marked; a loser that gets
        that claim instead (only one does) reads the run's mark, to tell a winner that died
        before sending from one that sent and left (a claim on RabbitMQ ends with its
        connection), and sends the run if nothing marked it. The entry's last recorded run is
        no such proof: another beat may have sent a later run by then.
        """
        for key, check_at in list(self._claimed_elsewhere.items()):
            if check_at > now:
                continue
            del self._claimed_elsewhere[key]
            name, due = key
            entry = self.entries.get(name)
            if entry is None or not entry.enabled:
                continue
            mailbox = await self._mailboxed()
            try:
                if not await mailbox.claim(
                    _done_key(name, due), _claim_ttl(self._period(entry, due))
                ):
                    continue  # the winner marked it sent, or another beat checks it
                sent = await self._marked_sent(mailbox, name, due)
            except AqueueError as exc:
                logger.error("Beat entry %s due %s not checked: %s", name, _when(due), exc)
                continue
            if sent:
                continue  # sent by a winner that has gone since
            logger.warning(
                "Beat entry %s due %s: the beat that claimed it did not send it; sending it",
                name,
                _when(due),
            )
            await self._send_run(entry, due, late=True)

    @staticmethod
    async def _marked_sent(mailbox: Mailbox, name: str, due: float) -> bool:
        """Whether the run's own mark says it was sent; else whether the last record is it.

        The last record is read only without a mark: beats of the previous version leave
        none, and record the run itself as the entry's last.
        """
        key = _sent_key(name, due)
        if key in await mailbox.items(key):
            return True
        recorded = await mailbox.items(LAST_PREFIX + name)
        return _float(recorded.get(LAST_PREFIX + name)) == due

    async def _claim_and_send(self, entry: Entry, due: float, *, late: bool) -> None:
        mailbox = await self._mailboxed()
        period = self._period(entry, due)
        ttl = _claim_ttl(period)
        try:
            claimed = await mailbox.claim(_run_key(entry.name, due), ttl)
        except AqueueError as exc:  # the broker is away: say so, carry on at the next tick
            logger.error("Beat entry %s due %s not sent: %s", entry.name, _when(due), exc)
            return
        if not claimed:  # another beat sends this one: check later that it did
            self._claimed_elsewhere[(entry.name, due)] = self.clock.now() + takeover_after(period)
            return
        if not await self._send_run(entry, due, late=late):
            return
        try:
            if not await mailbox.claim(_done_key(entry.name, due), ttl):
                logger.warning(
                    "Beat entry %s due %s: sent after another beat had given up waiting for "
                    "it; it may have gone out twice",
                    entry.name,
                    _when(due),
                )
        except AqueueError as exc:
            logger.error("Beat entry %s due %s sent, not marked: %s", entry.name, _when(due), exc)

    def _period(self, entry: Entry, due: float) -> float:
        """Seconds from the run due at `due` to the entry's next one."""
        return entry.schedule.next_after(due, self.tz) - due

    async def _send_run(self, entry: Entry, due: float, *, late: bool) -> bool:
        """Send one run (or do the housekeeping) and record it; False if the broker failed."""
        mailbox = await self._mailboxed()
        try:
            if entry.name in HOUSEKEEPING:
                await run_housekeeping(self.app, entry)
            else:
                await self._send(entry, due, late=late)
                await self.source.sent(entry, due)
            ttl = _claim_ttl(self._period(entry, due))
            await mailbox.put(_sent_key(entry.name, due), b"", ttl)
            await mailbox.put(LAST_PREFIX + entry.name, codec.pack(due))
        except AqueueError as exc:  # the broker is away: say so, carry on at the next tick
            logger.error("Beat entry %s due %s not sent: %s", entry.name, _when(due), exc)
            return False
        self.sent += 1
        if self.sent % COMPACT_EVERY == 0:
            await mailbox.items(CLAIM_PREFIX)
        return True

    async def _send(self, entry: Entry, due: float, *, late: bool) -> None:
        options: dict[str, Any] = dict(entry.options)
        headers = {**(options.pop("headers", None) or {}), "beat-entry": entry.name}
        headers["beat-due"] = due
        headers["beat-sent"] = self.clock.now()
        result = await sending.send(
            self.app, entry.task, entry.args, entry.kwargs, headers=headers, **options
        )
        logger.info(
            "Sent %s (%s)%s due %s, %.1f ms after: %s",
            entry.name,
            entry.task,
            " (catch-up)" if late else "",
            _when(due),
            (headers["beat-sent"] - due) * 1000,
            result.id,
        )


def _run_key(name: str, due: float) -> str:
    return f"{CLAIM_PREFIX}{name}.{round(due * 1000)}"


def _done_key(name: str, due: float) -> str:
    """Return the claim that says the run was sent (`_check_claimed_elsewhere`)."""
    return _run_key(name, due) + ".done"


def _sent_key(name: str, due: float) -> str:
    """Return the mark that says the run was sent, whichever runs were recorded since."""
    return f"{SENT_PREFIX}{name}.{round(due * 1000)}"


def _claim_ttl(period: float) -> float:
    """Claims outlive a period (at least `MIN_CLAIM_TTL`, at most a day)."""
    return min(max(period, MIN_CLAIM_TTL), 86400.0)


def _float(raw: bytes | None) -> float | None:
    if raw is None:
        return None
    try:
        value = codec.unpack(raw)
    except ValueError:
        return None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="milliseconds")


def _describe(entry: Entry) -> str:
    state = "" if entry.enabled else " (disabled)"
    return f"{entry.task} {entry.schedule}{state} [{entry.source}]"


def describe_entries(entries: Mapping[str, Entry]) -> list[str]:
    """One line per entry, for the banner and `aqueue beat APP list`."""
    return [f"{name}: {_describe(entry)}" for name, entry in entries.items()]
