"""Gateway settings from the environment: misspelt variables are reported, not ignored."""

from __future__ import annotations

from service.settings import OTHER_VARIABLES, Settings, unknown_variables


def test_unknown_sidserve_variables_are_named_with_the_closest_setting():
    environ = {
        "SIDSERVE_REDIS_URI": "redis://127.0.0.1:6379/0",  # a typo: the store would be ignored
        "SIDSERVE_WORKER": "3",
        "SIDSERVE_COLOUR": "red",
        "SIDSERVE_REDIS_URL": "redis://127.0.0.1:6379/0",
        "SIDSERVE_CACHE_DIR": "/tmp/cache",  # training's, not the gateway's
        "PATH": "/usr/bin",
    }
    assert unknown_variables(environ) == [
        "SIDSERVE_COLOUR is not a gateway setting and is ignored",
        "SIDSERVE_REDIS_URI is not a gateway setting and is ignored; "
        "did you mean SIDSERVE_REDIS_URL?",
        "SIDSERVE_WORKER is not a gateway setting and is ignored; did you mean SIDSERVE_WORKERS?",
    ]


def test_every_setting_is_known_and_the_other_variables_are_not_settings():
    settings = {f"SIDSERVE_{name.upper()}" for name in Settings.model_fields}
    assert unknown_variables(dict.fromkeys(settings, "1")) == []
    assert not settings & OTHER_VARIABLES


def test_serve_stops_on_a_bad_setting_naming_the_variable(tmp_path, monkeypatch, capsys):
    from sidserve.cli import main

    env_file = tmp_path / "gateway.env"
    env_file.write_text("SIDSERVE_COLOUR=red\n")
    args = ["serve", "--bundle", str(tmp_path), "--settings", str(env_file)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "bad settings: SIDSERVE_COLOUR: Extra inputs are not permitted" in err
    monkeypatch.setenv("SIDSERVE_PORT", "eighty")
    assert main(["serve", "--bundle", str(tmp_path)]) == 2
    assert "bad settings: SIDSERVE_PORT: Input should be a valid integer" in capsys.readouterr().err


def test_every_setting_has_a_row_in_the_settings_table_of_the_docs():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "gateway.md").read_text()
    table = doc[doc.index("## Settings") :]
    rows = {line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| `")}
    names = [f"`SIDSERVE_{name.upper()}`" for name in Settings.model_fields]
    assert [name for name in names if name not in rows] == []
