"""One embedded server for every local process with nothing configured: two MCP clients each
spawning `zen-async serve` over stdio both work, on one server; a second process attaches,
the first leaving does not stop it, the last does; a SIGKILLed user leaves the server to the
next one, which stops it on its way out. Never a valkey-server left behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from redis.asyncio import Redis

from zen_async.store.embedded import open_embedded_server

# A user of the embedded server in its own process: it prints the server's port and pid,
# then holds on until its stdin is closed.
USER = """
import asyncio, sys
from pathlib import Path
import orjson
import pytest
from zen_async.logs import configure_logging
from zen_async.store.embedded import open_embedded_server

async def main() -> None:
    async with open_embedded_server(Path(sys.argv[1])) as server:
        sys.stdout.write(orjson.dumps({"port": server.port, "pid": server.pid}).decode() + "\\n")
        sys.stdout.flush()
        await asyncio.to_thread(sys.stdin.read)

configure_logging("warning")
asyncio.run(main())
"""


def servers_in(data_dir: Path) -> list[int]:
    """The pids of the running valkey-servers working in ``data_dir`` (valkey chdirs to its
    data directory; a zombie has no working directory)."""
    found = []
    real = data_dir.resolve()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == "valkey-server" and (
                Path(os.readlink(entry / "cwd")) == real
            ):
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile, or not ours to inspect
    return found


async def answers(port: int) -> bool:
    async with Redis(host="127.0.0.1", port=port) as client:
        return bool(await client.ping())


@dataclass
class User:
    process: asyncio.subprocess.Process
    port: int
    pid: int

    async def leave(self) -> None:
        """Close its stdin: it leaves the server and exits."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        with anyio.fail_after(60):
            assert await self.process.wait() == 0

    async def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        with anyio.fail_after(60):
            await self.process.wait()


async def start_user(data_dir: Path) -> User:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        USER,
        str(data_dir),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert process.stdout is not None
    with anyio.fail_after(60):
        line = await process.stdout.readline()
    assert line, "the user process exited before it had a server"
    found = orjson.loads(line)
    return User(process, found["port"], found["pid"])


async def test_a_second_process_attaches_and_the_last_one_to_leave_stops_it(
    tmp_path: Path,
) -> None:
    first = await start_user(tmp_path)
    second = await start_user(tmp_path)
    assert (second.port, second.pid) == (first.port, first.pid), "the second must attach"
    assert servers_in(tmp_path) == [first.pid]

    await first.leave()
    assert servers_in(tmp_path) == [first.pid], "the first leaving must not stop it"
    assert await answers(second.port)

    await second.leave()
    assert servers_in(tmp_path) == [], "the last user leaving must stop it"
    assert not (tmp_path / "embedded.state").exists()


async def test_a_killed_sole_user_leaves_the_server_to_the_next_user_who_stops_it(
    tmp_path: Path,
) -> None:
    killed = await start_user(tmp_path)
    await killed.kill()
    assert servers_in(tmp_path) == [killed.pid], "the server outlives a SIGKILLed user"
    assert await answers(killed.port)

    async with open_embedded_server(tmp_path) as server:
        assert (server.port, server.pid) == (killed.port, killed.pid), "attach, not restart"
        assert servers_in(tmp_path) == [killed.pid]
    assert servers_in(tmp_path) == [], "its last user of this round stops it"


@pytest.mark.slow
async def test_a_frozen_server_is_replaced_and_its_users_still_count(tmp_path: Path) -> None:
    """A SIGSTOPped server cannot be attached to: the next process stops it (a verified pid)
    and starts another; the frozen server's user still counts as one, so the new server
    stops only when that user leaves too."""
    frozen = await start_user(tmp_path)
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        async with open_embedded_server(tmp_path) as server:
            assert server.pid != frozen.pid
            assert servers_in(tmp_path) == [server.pid], "never two servers on one directory"
            assert await answers(server.port)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(frozen.pid, signal.SIGCONT)
    assert servers_in(tmp_path) == [server.pid], "the older user still uses the directory"
    await frozen.leave()
    assert servers_in(tmp_path) == []


def payload(result: Any) -> Any:
    assert not result.is_error, result.content
    data = result.structured_content
    return data["result"] if isinstance(data, dict) and set(data) == {"result"} else data


async def test_two_stdio_servers_with_nothing_configured_share_one_server(
    tmp_path: Path,
) -> None:
    """Claude Desktop and Cursor, each spawning `zen-async serve` at once, nothing set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "ZEN_"))}
    env.update(
        HOME=str(tmp_path / "home"),
        XDG_DATA_HOME=str(tmp_path / "data"),
        PYTHONPATH=os.getcwd(),
        ZEN_LOG_LEVEL="warning",
    )
    data_dir = tmp_path / "data" / "zen-async" / "embedded"  # the default under XDG_DATA_HOME
    params = StdioServerParameters(
        command=str(Path(sys.executable).with_name("zen-async")),
        args=["serve"],
        env=env,
        cwd=tmp_path,
    )
    created = anyio.Event()
    read = anyio.Event()
    seen: dict[str, Any] = {}

    async def desktop() -> None:
        async with Client(params) as client:
            agent = {"agent_type": "coder", "agent_id": "shared-1", "metadata": {"by": "desktop"}}
            seen["created"] = payload(await client.call_tool("agent_create", agent))
            created.set()
            await read.wait()  # both servers up at once until the other has read it

    async def cursor() -> None:
        async with Client(params) as client:
            await created.wait()
            seen["read"] = payload(await client.call_tool("agent_get", {"agent_id": "shared-1"}))
            seen["servers"] = servers_in(data_dir)
            read.set()

    with anyio.fail_after(110):
        async with anyio.create_task_group() as tg:
            tg.start_soon(desktop)
            tg.start_soon(cursor)

    assert seen["created"]["agent_id"] == "shared-1"
    assert seen["read"]["metadata"] == {"by": "desktop"}, "both must use one server"
    assert len(seen["servers"]) == 1
    assert servers_in(data_dir) == [], "no valkey-server may outlive both clients"
    assert not (data_dir / "embedded.state").exists()


async def test_a_stdio_server_stopped_with_sigterm_stops_the_embedded_server(
    tmp_path: Path,
) -> None:
    """An MCP client closes a stdio server's stdin and sends SIGTERM when it has not exited
    soon after: the server shuts down in order (exit 0), and as the last user it stops the
    embedded server instead of leaving it running (before, SIGTERM killed it outright)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "ZEN_"))}
    env.update(
        HOME=str(tmp_path / "home"),
        XDG_DATA_HOME=str(tmp_path / "data"),
        PYTHONPATH=os.getcwd(),
        ZEN_LOG_LEVEL="warning",
    )
    data_dir = tmp_path / "data" / "zen-async" / "embedded"
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("zen-async")),
        "serve",
        env=env,
        cwd=tmp_path,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        with anyio.fail_after(60):
            while b"embedded valkey-server at" not in await process.stderr.readline():
                pass
        assert len(servers_in(data_dir)) == 1
        assert process.stdin is not None
        process.stdin.close()  # the client leaves, then does not wait for a slow shutdown
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(60):
            assert await process.wait() == 0
        assert servers_in(data_dir) == [], "the last user stopped the embedded server"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
