"""The outage journal's file and bounds, and the held breaker (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from zen_async import CapacityError, DegradedError
from zen_async.degraded import OutageJournal
from zen_async.store.breaker import CircuitBreaker, bypassing_hold


async def test_the_file_gives_back_every_pending_write_in_order(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "journal.jsonl"
    journal = await OutageJournal.open(path=path, max_ops=10)
    first = await journal.append("cache.set", "default", {"key": "a", "n": 1})
    second = await journal.append("events.publish", "acme", {"data": {"x": [1, 2]}})
    third = await journal.append("cache.set", "default", {"key": "c"})
    await journal.mark_done(first)
    await journal.aclose()  # one owner per file: release it to the next one

    again = await OutageJournal.open(path=path, max_ops=10)
    assert [(e.op_id, e.kind, e.tenant, e.args) for e in again.pending()] == [
        (second.op_id, "events.publish", "acme", {"data": {"x": [1, 2]}}),
        (third.op_id, "cache.set", "default", {"key": "c"}),
    ]
    later = await again.append("cache.set", "default", {"key": "d"})
    assert later.seq > third.seq, "sequence numbers go on after a restart"
    for entry in again.pending():
        await again.mark_done(entry)
    assert path.read_bytes() == b"", "the file is truncated once nothing is pending"
    await again.aclose()
    last = await OutageJournal.open(path=path, max_ops=10)
    assert last.depth == 0
    await last.aclose()


async def test_a_torn_last_line_is_cut_off_and_later_writes_stay_readable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.jsonl"
    journal = await OutageJournal.open(path=path, max_ops=10)
    kept = await journal.append("cache.set", "default", {"key": "a"})
    with path.open("ab") as f:
        f.write(b'{"rec": "op", "op_id": "torn')  # a crash in the middle of a write
    await journal.aclose()
    reopened = await OutageJournal.open(path=path, max_ops=10)
    assert [e.op_id for e in reopened.pending()] == [kept.op_id]
    added = await reopened.append("cache.set", "default", {"key": "b"})
    await reopened.aclose()
    last = await OutageJournal.open(path=path, max_ops=10)
    assert [e.op_id for e in last.pending()] == [kept.op_id, added.op_id]
    await last.aclose()


async def test_a_full_journal_refuses_the_write_and_says_so(tmp_path: Path) -> None:
    journal = await OutageJournal.open(path=tmp_path / "j", max_ops=2)
    await journal.append("cache.set", "default", {"key": "a"})
    await journal.append("cache.set", "default", {"key": "b"})
    with pytest.raises(CapacityError, match=r"outage journal full: 2 writes .*MAX_OPS=2"):
        await journal.append("cache.set", "default", {"key": "c"})
    assert journal.depth == 2
    assert len((tmp_path / "j").read_bytes().splitlines()) == 2


async def test_arguments_that_are_not_json_are_refused_before_anything_is_kept() -> None:
    journal = await OutageJournal.open(path=None, max_ops=5)
    with pytest.raises(TypeError):
        await journal.append("cache.set", "default", {"value": object()})
    assert journal.depth == 0


def test_a_held_breaker_refuses_everyone_but_the_replay() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=1.0)
    breaker.hold("replaying 3 journaled writes")
    with pytest.raises(DegradedError, match="replaying 3 journaled writes"):
        breaker.before_call()
    with bypassing_hold():
        assert breaker.before_call() is False
    assert breaker.statistics().held == "replaying 3 journaled writes"
    breaker.release()
    assert breaker.before_call() is False
