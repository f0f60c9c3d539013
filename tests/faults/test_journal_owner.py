"""One owner per outage-journal file: a second process on the same REDIS_OUTAGE_JOURNAL is
refused while the first lives (so nobody truncates lines another acknowledged), a SIGKILLed
owner's file is adopted with everything pending, and the file is private (0600). The owners
are real child processes."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from zen_async import BackendError, ConfigError, open_zen
from zen_async.degraded import OutageJournal
from zen_async.testing.deployments import Target

pytestmark = [pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]

OWNER = """
import asyncio, sys
import orjson
from pathlib import Path
from zen_async import ConfigError
from zen_async.degraded import OutageJournal
from zen_async.logs import configure_logging

def say(obj):
    print(orjson.dumps(obj).decode(), flush=True)

async def main(path, mode, count):
    configure_logging("error")  # stderr: stdout carries the replies
    try:
        journal = await OutageJournal.open(path=Path(path), max_ops=1000)
    except ConfigError as exc:
        say({"error": str(exc)})
        return
    written = [await journal.append("cache.set", "default", {"key": f"k{i}", "n": i})
               for i in range(count)]
    say({"pending": [[e.op_id, e.seq, e.args] for e in journal.pending()],
         "written": [e.op_id for e in written]})
    if mode == "hold":
        await asyncio.Event().wait()
    await journal.aclose()

path, mode, count = sys.argv[1:]
asyncio.run(main(path, mode, int(count)))
"""


@asynccontextmanager
async def owner(path: Path, mode: str, count: int = 0) -> AsyncIterator[asyncio.subprocess.Process]:
    """A child process that opens the journal at ``path``, appends ``count`` writes and
    replies on stdout; with ``mode="hold"`` it keeps the journal open until killed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", OWNER, str(path), mode, str(count),
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()  # reads stdout to its end, or wait() never returns


async def reply(proc: asyncio.subprocess.Process, *, deadline: float = 20.0) -> Any:
    assert proc.stdout is not None
    async with asyncio.timeout(deadline):
        line = await proc.stdout.readline()
    assert line, f"the owner process exited (code {await proc.wait()}) without replying"
    return orjson.loads(line)


async def sigkill(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGKILL)
    assert await proc.wait() == -signal.SIGKILL


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.slow
async def test_a_second_process_is_refused_and_the_owners_writes_survive(tmp_path: Path) -> None:
    """The reported loss: B journals on A's file, dies, and A's truncation erases B's
    acknowledged writes. Now B cannot open the file while A holds it, so every line in it is
    A's, and A's writes are all still there after A dies."""
    path = tmp_path / "outage.journal"
    async with owner(path, "hold", 10) as a:
        written = (await reply(a))["written"]
        async with owner(path, "hold", 10) as b:
            refused = await reply(b)
            assert await b.wait() == 0
        assert "error" in refused, "a second process must not journal to a held file"
        message = refused["error"]
        assert "REDIS_OUTAGE_JOURNAL" in message
        assert str(path) in message
        assert f"pid {a.pid}" in message, "the error names the process holding the file"
        with pytest.raises(ConfigError, match=rf"held by pid {a.pid}"):
            await OutageJournal.open(path=path, max_ops=100)
        await sigkill(a)

    adopted = await OutageJournal.open(path=path, max_ops=100)
    try:
        assert [e.op_id for e in adopted.pending()] == written, "A's writes were all kept"
    finally:
        await adopted.aclose()


@pytest.mark.slow
async def test_a_sigkilled_owners_file_is_adopted_with_everything_pending_in_order(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outage.journal"
    count = 25
    async with owner(path, "hold", count) as killed:
        written = (await reply(killed))["written"]
        assert len(written) == count
        await sigkill(killed)
    async with owner(path, "close", 0) as adopter:
        pending = (await reply(adopter))["pending"]
        assert await adopter.wait() == 0
    assert [op_id for op_id, _, _ in pending] == written, "every acknowledged write, in order"
    assert [args["n"] for _, _, args in pending] == list(range(count))
    assert [seq for _, seq, _ in pending] == sorted(seq for _, seq, _ in pending)


async def test_after_close_another_process_can_open_it(tmp_path: Path) -> None:
    path = tmp_path / "outage.journal"
    journal = await OutageJournal.open(path=path, max_ops=10)
    written = [await journal.append("cache.set", "default", {"n": i}) for i in range(3)]
    with pytest.raises(ConfigError, match=rf"REDIS_OUTAGE_JOURNAL=.*held by pid {os.getpid()}"):
        await OutageJournal.open(path=path, max_ops=10)  # a second journal in this process
    await journal.aclose()
    await journal.aclose()  # idempotent

    async with owner(path, "close", 0) as successor:
        found = await reply(successor)
        assert await successor.wait() == 0
    assert "error" not in found, "the lock is released by close"
    assert [op_id for op_id, _, _ in found["pending"]] == [e.op_id for e in written]


async def test_open_zen_owns_the_journal_until_it_exits(standalone: Target, tmp_path: Path) -> None:
    path = tmp_path / "outage.journal"
    settings = standalone.settings(redis_outage_journal=path)
    async with open_zen(settings):
        with pytest.raises(ConfigError, match=rf"held by pid {os.getpid()}"):
            async with open_zen(settings):
                pass
    journal = await OutageJournal.open(path=path, max_ops=10)  # released on exit
    await journal.aclose()


async def test_the_file_and_its_lock_are_private(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.journal"
    journal = await OutageJournal.open(path=fresh, max_ops=10)
    await journal.append("conversations.add_turn", "default", {"content": "secret"})
    await journal.aclose()
    assert mode_of(fresh) == 0o600
    assert mode_of(tmp_path / "fresh.journal.lock") == 0o600

    old = tmp_path / "old.journal"
    line = orjson.dumps(
        {"rec": "op", "op_id": "x1", "seq": 1, "kind": "cache.set", "tenant": "default",
         "at": 1.0, "args": {"key": "k"}}
    )  # fmt: skip
    old.write_bytes(line + b"\n")
    old.chmod(0o644)
    lock = tmp_path / "old.journal.lock"
    lock.write_bytes(b"")
    lock.chmod(0o644)
    journal = await OutageJournal.open(path=old, max_ops=10)
    try:
        assert mode_of(old) == 0o600, "a world-readable journal is narrowed on open"
        assert mode_of(lock) == 0o600
        assert [e.op_id for e in journal.pending()] == ["x1"], "and its content is kept"
    finally:
        await journal.aclose()


async def test_a_closed_journal_refuses_writes(tmp_path: Path) -> None:
    journal = await OutageJournal.open(path=tmp_path / "j", max_ops=10)
    await journal.aclose()
    with pytest.raises(BackendError, match="is closed"):
        await journal.append("cache.set", "default", {"key": "a"})
