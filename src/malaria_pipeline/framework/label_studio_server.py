"""``make label-studio``: starts Label Studio from its own environment (``.venv-label-studio``) on 127.0.0.1,
with its data under the project (``.label-studio/``, git-ignored), SQLite by default, and the account and
API token of the project's credentials (``label_studio`` of ``conf/local/credentials.yml``, else the
environment: ``conf/base/credentials.yml``), so that the reviewer's login and the pipelines' token agree.

The account is made at the first start only; its password and token are handed to Label Studio in its
environment, never on its command line, and never logged. PostgreSQL instead of SQLite: set Label Studio's
own variables (``DJANGO_DB=default``, ``POSTGRE_NAME``, ``POSTGRE_USER``, ``POSTGRE_PASSWORD``,
``POSTGRE_HOST``, ``POSTGRE_PORT``) before ``make label-studio``; they pass through.

Usage: ``python -m malaria_pipeline.framework.label_studio_server [--port 8080] [--env local]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ENVIRONMENT = Path(".venv-label-studio")
DATA_DIR = Path(".label-studio")
# Offline and quiet: no version check, no analytics, no error reports sent anywhere.
OFFLINE = {
    "LATEST_VERSION_CHECK": "false",
    "COLLECT_ANALYTICS": "false",
    "SENTRY_DSN": "",
    "FRONTEND_SENTRY_DSN": "",
}


def credentials(project: Path, env: str = "local") -> dict[str, Any]:
    """The ``label_studio`` credentials as the project's pipelines read them (Kedro's config loader, with
    ``conf/<env>`` over ``conf/base``)."""
    from malaria_pipeline.framework.config_loader import config_loader

    loader = config_loader(
        project / "conf", default_run_env=env if (project / "conf" / env).is_dir() else "base"
    )
    return dict(loader["credentials"].get("label_studio") or {})


def server_environment(
    given: dict[str, Any], project: Path, base: dict[str, str] | None = None
) -> dict[str, str]:
    """Label Studio's environment: ``base`` (this process's), its data under ``project``, legacy API tokens
    on (the pipelines' token is one), offline, and the account of ``given`` (``username``, ``password``,
    ``api_key``) for its first start.

    Raises:
        ValueError: a token or password without a username, or a token that Label Studio would not take
            as a legacy token (40 characters, letters and digits).
    """
    environment = dict(os.environ if base is None else base)
    # Label Studio reads each setting as LABEL_STUDIO_<X>, then bare <X>: a shell's own USERNAME, PASSWORD
    # or PORT would otherwise become the account or the port.
    for bare in ("USERNAME", "PASSWORD", "PORT", "USER_TOKEN"):
        environment.pop(bare, None)
    environment.update(OFFLINE)
    environment["LABEL_STUDIO_BASE_DATA_DIR"] = str((project / DATA_DIR).resolve())
    environment["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] = "true"
    username, password, token = given.get("username"), given.get("password"), given.get("api_key")
    if (password or token) and not username:
        raise ValueError(
            "label_studio has a password or api_key but no username: give the account's e-mail address as "
            "label_studio.username in conf/local/credentials.yml (or LABEL_STUDIO_USERNAME)"
        )
    if token and not (len(str(token)) == 40 and str(token).isalnum()):
        raise ValueError(
            "label_studio.api_key is not a legacy token of 40 letters and digits, so Label Studio would not "
            'make the account with it: generate one (python -c "import secrets; print(secrets.token_hex(20))") '
            "or leave api_key out, sign up in the browser, and copy your token from Account & Settings"
        )
    for name, value in (
        ("LABEL_STUDIO_USERNAME", username),
        ("LABEL_STUDIO_PASSWORD", password),
        ("LABEL_STUDIO_USER_TOKEN", token),
    ):
        if value:
            environment[name] = str(value)
    return environment


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--env", default="local", help="the Kedro environment whose credentials to read")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    project = Path.cwd()
    program = project / ENVIRONMENT / "bin" / "label-studio"
    if not program.exists():
        sys.exit(f"{program} is missing: run `make label-studio-install` first (docs/review.md)")
    given = credentials(project, args.env)
    environment = server_environment(given, project)
    (project / DATA_DIR).mkdir(exist_ok=True)
    logger.info(
        "Label Studio at http://127.0.0.1:%d (data in %s, %s); %s",
        args.port,
        project / DATA_DIR,
        "PostgreSQL" if environment.get("DJANGO_DB") in ("default", "postgresql") else "SQLite",
        f"log in as {given['username']}"
        if given.get("username")
        else "sign up in the browser at the first start",
    )
    os.execve(
        program,
        [str(program), "start", "--internal-host", "127.0.0.1", "--port", str(args.port), "--no-browser"],
        environment,
    )


if __name__ == "__main__":
    main()
