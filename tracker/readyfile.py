"""Ready files: how a child process tells its parent (or a test) where it listens."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson


def write(path: Path, **fields: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(fields))
    tmp.replace(path)


def wait(path: Path, *, timeout: float, alive: Any = None) -> dict[str, Any]:
    """Wait for ``path`` to appear; ``alive()`` returning False aborts early (the child died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            data: dict[str, Any] = orjson.loads(path.read_bytes())
            return data
        if alive is not None and not alive():
            raise RuntimeError(f"process exited before writing {path.name}")
        time.sleep(0.05)
    raise TimeoutError(f"{path} did not appear within {timeout:.0f}s")
