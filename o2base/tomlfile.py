"""Reading a TOML file a user wrote, with the one-line errors every reader gives."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any


def read_toml(path: Path, error: Callable[[str], Exception]) -> dict[str, Any]:
    """The TOML document at ``path``. Raises ``error("PATH: cannot read: REASON")`` when the
    file cannot be read and ``error("PATH: not valid TOML: DETAIL")`` (with line and column)
    when it does not parse; each reader passes its own exception type."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from exc
