"""read_toml: the document, or one line naming the file and the fault, in the caller's type."""

from __future__ import annotations

from pathlib import Path

import pytest

from o2base.tomlfile import read_toml


class Bad(Exception):
    pass


def test_a_document_is_read(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text('[site]\nid = "lhasa"\n')
    assert read_toml(path, Bad) == {"site": {"id": "lhasa"}}


def test_a_missing_file_and_bad_toml_raise_the_callers_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(Bad, match=r"nope\.toml: cannot read: No such file or directory$"):
        read_toml(missing, Bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("[site\n")
    with pytest.raises(Bad, match=r"broken\.toml: not valid TOML: .*line 1"):
        read_toml(broken, Bad)
