"""Start-up checks and typed errors for bad input at the edges."""

from __future__ import annotations

from pathlib import Path

import pytest
from symbi_audit.main import build_app, main
from symbi_common.errors import ConfigError
from symbi_common.settings import load_settings

from .conftest import Running


@pytest.mark.parametrize(
    ("key", "value", "setting"),
    [("SYMBI_AUDIT__CHECKPOINT_EVERY", "0", "audit"), ("SYMBI_AUDIT__BATCH", "0", "audit.batch")],
)
def test_bad_audit_settings_stop_start_up(tmp_path: Path, key: str, value: str, setting: str) -> None:
    settings = load_settings(env={key: value, "SYMBI_DATABASE_URL": "postgresql://x/y"})
    with pytest.raises(ConfigError) as info:
        build_app(settings)
    assert info.value.setting == setting


def test_unknown_audit_setting_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "symbi.toml"
    config.write_text("[audit]\ncheckpoint_evry = 5\n")
    with pytest.raises(SystemExit) as info:
        main(["--config", str(config)])
    assert info.value.code == 2
    assert "audit.checkpoint_evry" in capsys.readouterr().err


async def test_bad_path_and_query_parameters_are_typed(running: Running) -> None:
    for path, params, field in [
        ("/v1/audit/events/abc", {}, "sequence"),
        ("/v1/audit/checkpoints/x1", {}, "size"),
        ("/v1/audit/proofs/inclusion", {}, "sequence"),
        ("/v1/audit/proofs/inclusion", {"sequence": "one"}, "sequence"),
        ("/v1/audit/events", {"after": "z"}, "after"),
        # Past 64 bits (PostgreSQL bigint): typed, not a 500.
        (f"/v1/audit/events/{10**21}", {}, "sequence"),
        (f"/v1/audit/checkpoints/{2**63}", {}, "size"),
        ("/v1/audit/events/\u00b2", {}, "sequence"),
        ("/v1/audit/proofs/inclusion", {"sequence": str(10**21)}, "sequence"),
        ("/v1/audit/proofs/inclusion", {"sequence": "1", "size": str(2**63)}, "size"),
        ("/v1/audit/proofs/consistency", {"from": str(10**30), "to": "2"}, "from"),
        ("/v1/audit/events", {"after": str(-(10**21))}, "after"),
        ("/v1/audit/events", {"limit": str(10**21)}, "limit"),
    ]:
        resp = await running.http.get(path, params=params)
        assert resp.status_code == 422, (path, resp.text)
        assert resp.json()["error"]["details"]["field"] == field
    assert (await running.http.get("/v1/audit/checkpoints/latest")).status_code == 404
    assert (await running.http.get("/v1/audit/proofs/inclusion", params={"sequence": 1})).status_code == 404
