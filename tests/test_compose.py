"""compose.yaml runs what the Procfile runs, from one shared definition, with healthy dependencies first."""
import re

import pytest
import yaml

from tests.support import BASE_DIR

APP_SERVICES = ("web", "worker", "housekeeping", "beat", "flower")


@pytest.fixture(scope="module")
def compose_text() -> str:
    return (BASE_DIR / "compose.yaml").read_text()


@pytest.fixture(scope="module")
def compose(compose_text) -> dict:
    return yaml.safe_load(compose_text)


@pytest.fixture(scope="module")
def procfile() -> dict[str, str]:
    lines = (BASE_DIR / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


def unescape(command: str) -> str:
    """Compose reads `$$` as a literal `$`; undo that to compare with the Procfile."""
    return command.replace("$$", "$")


def test_every_service_is_there(compose):
    assert {"redis", "postgres", *APP_SERVICES} <= set(compose["services"])


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_run_the_procfile_line_through_sh(compose, procfile, name):
    command = compose["services"][name]["command"]
    assert command[:2] == ["sh", "-c"] and len(command) == 3
    assert unescape(command[2]) == procfile[name]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_no_unescaped_dollar_reaches_compose_interpolation_in_commands(compose_text, name):
    service = re.search(rf"^  {name}:\n(.*?)(?=^  \S|\Z)", compose_text, re.M | re.S).group(1)
    command = next(line for line in service.splitlines() if line.strip().startswith("command:"))
    assert not re.search(r"(?<!\$)\$(?!\$)\{", command.replace("$$", "")), command


def test_app_services_share_one_definition_through_an_anchor(compose, compose_text):
    anchor = re.search(r"^(x-[\w-]+): &(\w[\w-]*)$", compose_text, re.M)
    assert anchor, "a top-level x- extension holding the shared definition"
    shared = compose[anchor.group(1)]
    for name in APP_SERVICES:
        block = re.search(rf"^  {name}:\n(.*?)(?=^  \S|\Z)", compose_text, re.M | re.S).group(1)
        assert f"<<: *{anchor.group(2)}" in block, name
        service = compose["services"][name]
        assert service["image"] == shared["image"] and service["environment"] == shared["environment"]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_wait_for_healthy_redis_and_postgres(compose, name):
    depends = compose["services"][name]["depends_on"]
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", ["redis", "postgres", "web", "worker", "flower"])
def test_services_that_can_be_checked_have_a_healthcheck(compose, name):
    assert compose["services"][name]["healthcheck"]["test"]


def test_redis_keeps_queued_messages(compose):
    command = " ".join(compose["services"]["redis"]["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert any(v.endswith(":/data") for v in compose["services"]["redis"]["volumes"])


def test_workers_can_be_scaled(compose):
    worker = compose["services"]["worker"]
    # A fixed name or a published port would make `--scale worker=4` fail on the second copy.
    assert "container_name" not in worker and "ports" not in worker
    assert "deploy" not in compose["services"]["beat"] or compose["services"]["beat"]["deploy"].get("replicas", 1) == 1


def test_the_app_talks_to_the_compose_postgres_and_redis(compose):
    env = compose["services"]["web"]["environment"]
    assert env["DATABASE_URL"].startswith("postgres://") and "@postgres:5432/" in env["DATABASE_URL"]
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert env["DJANGO_DEBUG"] == "false"
    assert env["DJANGO_SECRET_KEY"].startswith("${DJANGO_SECRET_KEY:?")


def test_published_ports_bind_to_loopback_only(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond the host's loopback"


def test_rabbitmq_is_a_profile_the_broker_url_switches_to(compose, compose_text):
    rabbitmq = compose["services"]["rabbitmq"]
    assert rabbitmq["profiles"] == ["rabbitmq"], "started only with --profile rabbitmq"
    assert rabbitmq["healthcheck"]["test"] and "ports" not in rabbitmq
    assert any(v.endswith(":/var/lib/rabbitmq") for v in rabbitmq["volumes"])
    # guest may connect from localhost only: the app needs a user of its own.
    assert rabbitmq["environment"]["RABBITMQ_DEFAULT_USER"] != "guest"
    assert "consumer_timeout" in rabbitmq["environment"]["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
    # The services of every profile-less `up` stay as they were.
    assert all("profiles" not in compose["services"][name] for name in ("redis", "postgres", *APP_SERVICES))
    assert "--profile rabbitmq" in compose_text and "CELERY_BROKER_URL=amqp://jobs:" in compose_text


@pytest.mark.parametrize("name", APP_SERVICES)
def test_one_variable_switches_the_broker_and_redis_is_the_default(compose, name):
    env = compose["services"][name]["environment"]
    assert env["CELERY_BROKER_URL"] == "${CELERY_BROKER_URL:-" + env["REDIS_URL"] + "}"
    # Waited for when the profile runs it, and not required when it does not.
    assert compose["services"][name]["depends_on"]["rabbitmq"] == {"condition": "service_healthy", "required": False}
