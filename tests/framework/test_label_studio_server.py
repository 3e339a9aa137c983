"""make label-studio's environment for Label Studio: its data under the project, offline, the account of the
project's credentials, a shell's own USERNAME kept out, PostgreSQL's variables passed through."""

from pathlib import Path

import pytest

from malaria_pipeline.framework.label_studio_server import server_environment

TOKEN = "0123456789abcdef0123456789abcdef01234567"


def test_the_account_and_the_data_folder_reach_label_studio_and_the_shells_own_names_do_not(tmp_path: Path):
    shell = {
        "PATH": "/usr/bin",
        "USERNAME": "root",
        "PORT": "9999",
        "DJANGO_DB": "default",
        "POSTGRE_HOST": "db",
    }
    given = {"username": "ann@example.org", "password": "secret", "api_key": TOKEN}
    environment = server_environment(given, tmp_path, base=shell)
    assert environment["LABEL_STUDIO_BASE_DATA_DIR"] == str((tmp_path / ".label-studio").resolve())
    assert (environment["LABEL_STUDIO_USERNAME"], environment["LABEL_STUDIO_PASSWORD"]) == (
        "ann@example.org",
        "secret",
    )
    assert environment["LABEL_STUDIO_USER_TOKEN"] == TOKEN
    assert environment["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert environment["LATEST_VERSION_CHECK"] == "false" and environment["COLLECT_ANALYTICS"] == "false"
    # Label Studio would read a bare USERNAME or PORT as its own settings
    assert "USERNAME" not in environment and "PORT" not in environment
    assert (environment["DJANGO_DB"], environment["POSTGRE_HOST"], environment["PATH"]) == (
        "default",
        "db",
        "/usr/bin",
    )
    assert not any(name.startswith("LABEL_STUDIO_USER") for name in server_environment({}, tmp_path, base={}))


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"api_key": TOKEN}, "has a password or api_key but no username"),
        (
            {"username": "ann@example.org", "api_key": "short"},
            "is not a legacy token of 40 letters and digits",
        ),
    ],
)
def test_credentials_label_studio_could_not_use_are_refused_by_name(tmp_path: Path, given, message):
    with pytest.raises(ValueError, match=message):
        server_environment(given, tmp_path, base={})
