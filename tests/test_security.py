"""Production settings pass Django's deployment checklist, and unsafe mixes are refused."""

import secrets

from tests.conftest import manage

NO_ISSUES = "System check identified no issues (0 silenced)."


def production(**extra):
    """The environment of a production server: a real secret key, no debug."""
    return {
        "MULTIDS_PRODUCTION": "1",
        "MULTIDS_DEBUG": "",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    } | extra


def test_check_deploy_has_nothing_to_say_in_production(tmp_path):
    done = manage(
        "check", "--deploy", "--fail-level", "WARNING", data_dir=tmp_path, env=production()
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == NO_ISSUES
    assert "WARNINGS" not in done.stderr


def test_check_deploy_does_warn_on_a_development_setup(tmp_path):
    """The negative control: the same check fails without the production settings."""
    done = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        data_dir=tmp_path,
        env={"MULTIDS_PRODUCTION": "", "MULTIDS_DEBUG": "1"},
    )
    assert done.returncode != 0
    for warning in (
        "security.W004",
        "security.W008",
        "security.W012",
        "security.W016",
        "security.W018",
    ):
        assert warning in done.stderr


def test_production_refuses_debug(tmp_path):
    done = manage("check", data_dir=tmp_path, env=production(MULTIDS_DEBUG="1"))
    assert done.returncode != 0
    assert "MULTIDS_DEBUG=1 shows tracebacks and settings to every visitor" in done.stderr


def test_production_refuses_a_missing_secret_key(tmp_path):
    done = manage("check", data_dir=tmp_path, env=production(DJANGO_SECRET_KEY=""))
    assert done.returncode != 0
    assert "DJANGO_SECRET_KEY must be set when MULTIDS_PRODUCTION=1" in done.stderr
