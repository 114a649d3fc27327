"""The keys embedded mode generates into its data directory are readable by their owner only from
the moment the file exists: written first and chmod-ed after, each stood readable by every local
user (umask 022) while its key was in it."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from omni import bootstrap
from omni.settings import Settings


@pytest.mark.parametrize(
    ("generate", "name"),
    [(bootstrap.admin_key, "admin_key"), (bootstrap.gdpr_master_key, "gdpr_master_key")],
    ids=["admin-key", "gdpr-master-key"],
)
def test_a_generated_key_file_is_never_readable_by_others(
    generate: Callable[[Settings], object], name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMNI_ADMIN_KEY", raising=False)
    monkeypatch.delenv("OMNI_GDPR_MASTER_KEY", raising=False)
    modes_when_written: list[int | None] = []
    write_text = Path.write_text

    def watched(path: Path, *args: object, **kwargs: object) -> int:
        modes_when_written.append(stat.S_IMODE(path.stat().st_mode) if path.exists() else None)
        return write_text(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", watched)
    settings = Settings(data_dir=tmp_path / "data", mode="embedded")
    key = generate(settings)
    assert modes_when_written == [0o600]  # the file existed, owner-only, before the key went in
    assert stat.S_IMODE((tmp_path / "data" / name).stat().st_mode) == 0o600
    assert (tmp_path / "data" / name).read_text().strip() == key
