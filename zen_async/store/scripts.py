"""The Lua script registry: one ``scripts/<op>.lua`` file per operation.

Each file opens with a header comment that documents KEYS and ARGV; a line
``-- idempotent: true`` in that header declares that running the script twice with the same
arguments has the effect of running it once, which lets the runner retry it after a lost reply.
Scripts run by EVALSHA; a NOSCRIPT reply (a restarted server, a new cluster node, a failover)
falls back to EVAL, which also caches the script on that server.

Lua has no modules here, so code shared by several scripts lives in ``scripts/lib/<name>.lua``
and a script includes it with a line ``--@include <name>``, replaced by that file's text
where it stands (so the included functions see the script's locals declared above it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from zen_async.errors import ConfigError, ConfigProblem

__all__ = ["Script", "ScriptRegistry"]


@dataclass(frozen=True, slots=True)
class Script:
    """One Lua operation."""

    name: str
    source: str
    sha: str
    idempotent: bool


class ScriptRegistry(Mapping[str, Script]):
    """The scripts of a directory, by file stem. Read once, at start-up."""

    def __init__(self, scripts: Mapping[str, Script]) -> None:
        self._scripts = dict(scripts)

    @classmethod
    def load(cls, directory: Path | None = None) -> ScriptRegistry:
        """Load every ``*.lua`` of ``directory`` (default: the package's ``store/scripts``).

        Raises:
            ConfigError: a script lacks its KEYS/ARGV header.
        """
        root = directory or Path(str(resources.files("zen_async.store") / "scripts"))
        libraries = {p.stem: p.read_text(encoding="utf-8") for p in (root / "lib").glob("*.lua")}
        scripts: dict[str, Script] = {}
        for path in sorted(root.glob("*.lua")):
            source = _expand(path.name, path.read_text(encoding="utf-8"), libraries)
            header = _header(source)
            if "KEYS" not in header or "ARGV" not in header:
                raise ConfigError(
                    [
                        ConfigProblem(
                            f"script {path.name}",
                            header[:60],
                            "a leading comment block documenting KEYS and ARGV",
                        )
                    ]
                )
            scripts[path.stem] = Script(
                name=path.stem,
                source=source,
                sha=hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest(),
                idempotent="-- idempotent: true" in header,
            )
        return cls(scripts)

    def __getitem__(self, name: str) -> Script:
        try:
            return self._scripts[name]
        except KeyError:
            raise KeyError(
                f"no Lua script named {name!r}; known: {sorted(self._scripts)}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._scripts)

    def __len__(self) -> int:
        return len(self._scripts)


def _expand(name: str, source: str, libraries: Mapping[str, str]) -> str:
    """Replace each ``--@include <lib>`` line with that library's source.

    Raises:
        ConfigError: an include names no file of ``scripts/lib``.
    """
    lines = []
    for line in source.splitlines(keepends=True):
        if line.startswith("--@include "):
            lib = line.split(maxsplit=1)[1].strip()
            if lib not in libraries:
                raise ConfigError(
                    [
                        ConfigProblem(
                            f"script {name}",
                            line.strip(),
                            f"an include of one of scripts/lib: {sorted(libraries)}",
                        )
                    ]
                )
            lines.append(libraries[lib].rstrip("\n") + "\n")
        else:
            lines.append(line)
    return "".join(lines)


def _header(source: str) -> str:
    lines = []
    for line in source.splitlines():
        if not line.startswith("--"):
            break
        lines.append(line)
    return "\n".join(lines)
