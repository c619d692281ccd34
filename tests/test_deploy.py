"""The deployment files, checked without a container engine.

What can be checked here is: the compose file's services, health checks, start order and
environment (which must load as settings), that every command they run is one tallyproxy
has, the Dockerfile's shape, the nginx config under ``nginx -t``, and that
``config.example.yaml`` documents exactly the keys ``Settings`` has.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from proxy.access.mode import access_mode
from proxy.app import SHUTDOWN_DRAIN_SECONDS
from proxy.cli import build_parser
from proxy.config import ENV_KEYS, ConfigError, DatabaseSettings, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
REPLICAS = ("proxy-1", "proxy-2")
IMAGE_HOME = "/var/lib/tallyproxy"
# The image's data volume and working directory: the default SQLite file and spool land there.
DATA = f"{IMAGE_HOME}/data"
IMAGE_IDS = "10001"
STOP_TIMEOUT = 75
REQUIRED = {"TALLYPROXY_ADMIN_TOKEN": "a-long-random-admin-token"}
_VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::([-?])([^}]*))?\}")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def services() -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"]
    return found


def interpolate(value: str, given: dict[str, str] | None = None) -> str:
    """Compose's ``${NAME:-default}`` with only ``given`` set: the defaults otherwise.

    ``${NAME:?message}`` must be given: compose refuses to start without it.
    """

    def value_of(match: re.Match[str]) -> str:
        name, kind, rest = match[1], match[2], match[3]
        if given and name in given:
            return given[name]
        if kind == "?":
            raise LookupError(f"compose refuses to start without {name}: {rest}")
        return rest or ""

    return _VARIABLE.sub(value_of, value)


def assert_is_a_tallyproxy_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)  # SystemExit on an unknown command or flag
    assert callable(args.run)


# -- docker-compose.yml ----------------------------------------------------------------------


def test_compose_runs_postgres_a_migration_two_replicas_and_a_load_balancer() -> None:
    assert set(services()) == {"postgres", "migrate", *REPLICAS, "lb"}


def test_every_long_running_service_has_a_health_check() -> None:
    for name in ("postgres", *REPLICAS, "lb"):
        check = services()[name]["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert {"interval", "timeout", "retries"} <= set(check), name
    # Over TCP: the Unix socket answers during first-time initialisation, before the real
    # server listens, and migrate would then meet a refused connection.
    check = shlex.split(services()["postgres"]["healthcheck"]["test"][1])
    assert check[0] == "pg_isready" and check[check.index("-h") + 1] == "127.0.0.1"
    assert check[check.index("-U") + 1] == "tally" and check[check.index("-d") + 1] == "tallyproxy"
    for name in REPLICAS:
        assert any("/healthz" in part for part in services()[name]["healthcheck"]["test"])
    assert services()["migrate"]["healthcheck"] == {"disable": True}


def test_start_order_waits_for_health_and_the_migration() -> None:
    def conditions(name: str) -> dict[str, str]:
        return {dep: spec["condition"] for dep, spec in services()[name]["depends_on"].items()}

    assert conditions("migrate") == {"postgres": "service_healthy"}
    for name in REPLICAS:
        assert conditions(name) == {
            "postgres": "service_healthy",
            "migrate": "service_completed_successfully",
        }
    assert conditions("lb") == dict.fromkeys(REPLICAS, "service_healthy")
    assert services()["migrate"]["restart"] == "no"


def test_tallyproxy_services_run_real_commands_of_one_built_image() -> None:
    assert services()["migrate"]["command"] == ["migrate"]
    assert_is_a_tallyproxy_command(services()["migrate"]["command"])
    for name in REPLICAS:
        command = services()[name]["command"]
        assert command[:3] == ["serve", "--host", "0.0.0.0"]
        assert_is_a_tallyproxy_command(command)
    for name in ("migrate", *REPLICAS):
        service = services()[name]
        assert service["image"] == "tallyproxy:local"
        assert (ROOT / service["build"]["context"] / "Dockerfile").is_file()
    for name in ("postgres", "lb"):
        image = interpolate(services()[name]["image"])
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image's tag"


def test_each_replica_has_its_own_spool_volume() -> None:
    declared = set(compose()["volumes"])
    mounts = [services()[name]["volumes"] for name in REPLICAS]
    assert all(len(m) == 1 for m in mounts)
    sources = {m[0].split(":")[0] for m in mounts}
    targets = {m[0].split(":")[1] for m in mounts}
    assert len(sources) == len(REPLICAS) and sources <= declared
    assert targets == {DATA}
    assert services()["postgres"]["volumes"][0].split(":")[0] in declared


def test_the_environment_loads_as_settings_pointing_at_the_postgres_service() -> None:
    for name in ("migrate", *REPLICAS):
        environment = services()[name]["environment"]
        assert set(environment) <= set(ENV_KEYS) | {"TALLYPROXY_CONFIG"}
        env = {key: interpolate(value, REQUIRED) for key, value in environment.items()}
        settings = load_settings(None, environ=env)
        assert settings.database.url.startswith("postgresql+asyncpg://")
        assert "@postgres:5432/" in settings.database.url
        assert settings.admin_token == REQUIRED["TALLYPROXY_ADMIN_TOKEN"]
        # Every connection comes from the balancer: the per-address default would refuse it.
        bound = settings.server.max_connections_per_client
        assert bound is None or bound >= 65536


def test_compose_has_no_empty_admin_token_default() -> None:
    # The replicas listen on 0.0.0.0 behind a published port: an empty token would be open.
    for name in ("migrate", *REPLICAS):
        token = services()[name]["environment"]["TALLYPROXY_ADMIN_TOKEN"]
        assert token.startswith("${TALLYPROXY_ADMIN_TOKEN:?"), token
        with pytest.raises(LookupError, match="TALLYPROXY_ADMIN_TOKEN"):
            interpolate(token)


def test_the_replicas_run_locked_with_the_token_and_would_refuse_to_start_without() -> None:
    for name in REPLICAS:
        command = services()[name]["command"]
        host = command[command.index("--host") + 1]
        given = {**REQUIRED, "TALLYPROXY_UPSTREAM_API_KEY": "sk-provider"}
        env = {k: interpolate(v, given) for k, v in services()[name]["environment"].items()}
        settings = load_settings(None, {("server", "host"): host}, environ=env)
        assert access_mode(settings).name == "locked"
        del env["TALLYPROXY_ADMIN_TOKEN"]
        open_settings = load_settings(None, {("server", "host"): host}, environ=env)
        with pytest.raises(ConfigError, match="TALLYPROXY_ADMIN_TOKEN"):
            access_mode(open_settings)


def test_every_compose_variable_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Scaling out") :]
    variables = set(_VARIABLE.findall(COMPOSE.read_text()))
    assert variables
    for name, _kind, _default in variables:
        assert f"`{name}`" in section, f"README's 'Scaling out' should explain {name}"


def test_the_load_balancer_sends_to_the_replicas() -> None:
    lb = services()["lb"]
    source, target, *_ = lb["volumes"][0].split(":")
    assert (ROOT / source).resolve() == NGINX_CONF
    assert target == "/etc/nginx/nginx.conf"
    target_name, port = replicas_target()
    for name in REPLICAS:
        command = services()[name]["command"]
        assert command[command.index("--port") + 1] == port
        assert target_name in services()[name]["networks"]["default"]["aliases"], name
    for name in ("postgres", "migrate", "lb"):
        assert "networks" not in services()[name], f"{name} must not answer as a replica"


def test_the_load_balancer_publishes_on_loopback_unless_told_otherwise() -> None:
    (published,) = services()["lb"]["ports"]
    assert (
        published
        == "${TALLYPROXY_PUBLISHED_ADDRESS:-127.0.0.1}:${TALLYPROXY_PUBLISHED_PORT:-8080}:8080"
    )
    assert interpolate(published) == "127.0.0.1:8080:8080"
    given = {"TALLYPROXY_PUBLISHED_ADDRESS": "0.0.0.0", "TALLYPROXY_PUBLISHED_PORT": "80"}
    assert interpolate(published, given) == "0.0.0.0:80:8080"


def test_debians_docker_compose_1_29_accepts_the_top_level_keys() -> None:
    # 1.29's schema has no `name:` ("'name' does not match any of the regexes"); the project
    # takes the folder's name, or COMPOSE_PROJECT_NAME's.
    assert set(compose()) - {"version"} <= {"services", "volumes", "x-tallyproxy", "x-replica"}
    version = compose().get("version")
    assert version is None or (isinstance(version, str) and version.startswith("3"))
    readme = (ROOT / "README.md").read_text()
    assert "COMPOSE_PROJECT_NAME" in readme[readme.index("## Scaling out") :]


def test_the_stop_timeout_fits_the_shutdown_grace() -> None:
    # SIGTERM: running streams get server.shutdown_grace, then the writer its drain; a
    # SIGKILL before both are over loses the streams' records.
    needed = Settings().server.shutdown_grace + SHUTDOWN_DRAIN_SECONDS
    for name in REPLICAS:
        stop = services()[name]["stop_grace_period"]
        assert stop == f"{STOP_TIMEOUT}s", name
    assert needed + 10 <= STOP_TIMEOUT
    assert dict(final_stage())["STOPSIGNAL"] == "SIGTERM"
    readme = (ROOT / "README.md").read_text()
    advice = readme.index(f"docker stop -t {STOP_TIMEOUT}")
    assert "10 s" in readme[advice - 600 : advice + 600], "say what the 10 s default does"


def test_the_images_can_be_replaced_by_variables() -> None:
    # A machine that cannot pull from a registry runs the stack on stand-ins built from
    # Debian's packages (deploy/standins/build.sh).
    build_args = services()["migrate"]["build"]["args"]
    assert build_args["PYTHON_IMAGE"] == "${TALLYPROXY_PYTHON_IMAGE:-python:3.11-slim-bookworm}"
    assert interpolate(build_args["PYTHON_IMAGE"]) == dockerfile_default("PYTHON_IMAGE")
    assert services()["postgres"]["image"].startswith("${TALLYPROXY_POSTGRES_IMAGE:-")
    assert services()["lb"]["image"].startswith("${TALLYPROXY_NGINX_IMAGE:-")


# -- deploy/nginx.conf ----------------------------------------------------------------------


def replicas_target() -> tuple[str, str]:
    """The name and port that nginx sends to, through a variable so it is resolved again."""
    conf = NGINX_CONF.read_text()
    match = re.search(r"^\s*set \$replicas ([\w.-]+):(\d+);", conf, re.MULTILINE)
    assert match is not None
    return match[1], match[2]


def test_nginx_resolves_the_replicas_again_while_it_runs() -> None:
    # An upstream block's servers are resolved once at start: a replica restarted on another
    # address would get no traffic until nginx restarts.
    conf = NGINX_CONF.read_text()
    assert re.search(r"^\s*resolver 127\.0\.0\.11 valid=5s ipv6=off;", conf, re.MULTILINE)
    assert re.findall(r"^\s*proxy_pass (\S+);", conf, re.MULTILINE) == ["http://$replicas"]
    assert not re.search(r"^\s*upstream\s", conf, re.MULTILINE)


def test_nginx_config_is_streaming_friendly() -> None:
    conf = NGINX_CONF.read_text()
    for directive in (
        "proxy_buffering off;",
        "proxy_request_buffering off;",
        "proxy_http_version 1.1;",
        "proxy_read_timeout 900s;",
    ):
        assert directive in conf


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if nginx is None:
        pytest.fail(
            "nginx is not installed, so deploy/nginx.conf cannot be checked: "
            "apt-get install -y nginx (Debian/Ubuntu)"
        )
    # The replicas' name is looked up per request, so the config checks without compose's DNS.
    (tmp_path / "nginx.conf").write_text(NGINX_CONF.read_text())
    (tmp_path / "logs").mkdir()
    done = subprocess.run(
        [
            nginx,
            "-t",
            "-p",
            str(tmp_path),
            "-c",
            str(tmp_path / "nginx.conf"),
            "-e",
            str(tmp_path / "logs" / "error.log"),
            "-g",
            f"pid {tmp_path / 'nginx.pid'};",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


# -- Dockerfile -----------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation line"
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def dockerignored(path: str) -> bool:
    """Whether the build context leaves ``path`` out (the last matching pattern wins)."""
    ignored = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern.removeprefix("**/")):
            ignored = not negated
    return ignored


def test_dockerfile_has_a_build_stage_and_a_slim_runtime() -> None:
    instructions = dockerfile()
    known = {"ARG", "FROM", "ENV", "RUN", "WORKDIR", "COPY", "USER", "EXPOSE"}
    known |= {"HEALTHCHECK", "STOPSIGNAL", "ENTRYPOINT", "CMD", "VOLUME"}
    assert {keyword for keyword, _ in instructions} <= known
    stages = [args for keyword, args in instructions if keyword == "FROM"]
    assert len(stages) == 2 and stages[0].endswith(" AS build")
    base = next(args for keyword, args in instructions if args.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim(-\w+)?", base)


def test_dockerfile_copies_only_what_exists_and_is_in_the_context() -> None:
    copies = [args.split() for keyword, args in dockerfile() if keyword == "COPY"]
    assert copies
    for parts in copies:
        if parts[0].startswith("--from="):
            assert parts[0] == "--from=build"
            continue
        for source in parts[:-1]:
            assert (ROOT / source).exists(), source
            assert not dockerignored(source), f".dockerignore leaves out {source}"
    for unwanted in (".venv", ".git", "tests", "tallyproxy.db", "tallyproxy-spool"):
        assert dockerignored(unwanted), unwanted


def dockerfile_default(name: str) -> str:
    return next(a for k, a in dockerfile() if k == "ARG" and a.startswith(f"{name}=")).split(
        "=", 1
    )[1]


def test_the_image_runs_tallyproxy_serve_as_a_user_with_a_health_check() -> None:
    stage = final_stage()
    args = dict(stage)
    assert args["USER"].split(":")[0] not in ("root", "0")
    assert "useradd" in args["RUN"] and f"mkdir {DATA}" in args["RUN"]
    assert "/healthz" in args["HEALTHCHECK"] and args["HEALTHCHECK"].split()[0] == "--interval=10s"
    entrypoint = yaml.safe_load(args["ENTRYPOINT"])
    command = yaml.safe_load(args["CMD"])
    assert entrypoint == ["tallyproxy"] and command == ["serve", "--host", "0.0.0.0"]
    assert_is_a_tallyproxy_command(command)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "tallyproxy" in scripts
    assert args["EXPOSE"] == "8080"


def test_user_and_group_ids_are_pinned() -> None:
    # A bind-mounted directory is made writable with `chown 10001:10001`, whatever the base.
    run = shlex.split(dict(final_stage())["RUN"])
    groupadd, useradd = run.index("groupadd"), run.index("useradd")
    assert run[run.index("--gid", groupadd) + 1] == IMAGE_IDS
    assert run[run.index("--uid", useradd) + 1] == IMAGE_IDS
    assert run[run.index("--gid", useradd) + 1] == IMAGE_IDS
    assert dict(final_stage())["USER"] == f"{IMAGE_IDS}:{IMAGE_IDS}"
    assert f"chown {IMAGE_IDS}:{IMAGE_IDS} {DATA}" in dict(final_stage())["RUN"]
    readme = (ROOT / "README.md").read_text()
    assert f"chown {IMAGE_IDS}:{IMAGE_IDS}" in readme


def test_the_sqlite_file_and_the_spool_live_on_the_advised_volume() -> None:
    stage = dict(final_stage())
    assert stage["VOLUME"] == DATA and stage["WORKDIR"] == DATA
    defaults = DatabaseSettings()
    sqlite_file = defaults.url.removeprefix("sqlite+aiosqlite:///")
    for relative in (sqlite_file, defaults.spool_dir):
        assert not relative.startswith("/"), relative
        resolved = PurePosixPath(os.path.normpath(PurePosixPath(DATA) / relative))
        assert resolved.is_relative_to(DATA), relative
    # No environment variable of the image sets them: a config file's keys would be masked.
    env = " ".join(a for k, a in final_stage() if k == "ENV")
    assert "TALLYPROXY_DATABASE_URL" not in env


def build_stage() -> list[tuple[str, str]]:
    return dockerfile()[: [k for k, _ in dockerfile()].index("FROM", 2)]


def test_the_dependencies_install_in_a_layer_before_the_source() -> None:
    build = build_stage()
    runs = [i for i, (k, a) in enumerate(build) if k == "RUN" and "pip install" in a]
    source = next(i for i, (k, a) in enumerate(build) if k == "COPY" and "proxy" in a.split())
    assert len(runs) == 2 and runs[0] < source < runs[1]
    copied = [s for k, a in build[: runs[0]] if k == "COPY" for s in a.split()[:-1]]
    assert sorted(copied) == [
        "constraints.txt",
        "deploy/requirements.py",
        "pyproject.toml",
    ]
    dependencies = build[runs[0]][1]
    assert "--constraint constraints.txt --requirement requirements.txt" in dependencies
    package = shlex.split(build[runs[1]][1])
    assert package[-2] == "--no-deps" and package[-1].startswith("/src")


def test_the_requirements_script_lists_the_dependencies_and_the_extras() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def listed(*argv: str) -> list[str]:
        script = ROOT / "deploy" / "requirements.py"
        done = subprocess.run(
            [sys.executable, str(script), *argv],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.splitlines()

    assert listed("") == listed() == project["dependencies"]
    llama = project["optional-dependencies"]["llama"]
    assert listed("llama") == project["dependencies"] + llama


def test_every_runtime_dependency_is_pinned_in_the_constraints() -> None:
    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and re.fullmatch(r"[\w.+]+", version), f"not a pin: {line}"
        pins[canonical(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = canonical(re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0])
        assert name in pins, f"constraints.txt lacks a pin for {name}"
    assert "tallyproxy" not in pins and "pytest" not in pins and "ruff" not in pins


def test_the_llama_extra_is_an_optional_build_argument() -> None:
    build = build_stage()
    assert ("ARG", 'EXTRAS=""') in build
    install = next(a for k, a in build if k == "RUN" and "pip install" in a)
    assert re.search(r'requirements\.py "\$\{?EXTRAS\}?"', install)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "llama" in extras["optional-dependencies"]


# -- config.example.yaml ---------------------------------------------------------------------

_KEY = re.compile(r"^(?P<indent>\s*)(?P<item>- )?(?P<key>[a-z_]+):(\s|$)")


def documented_keys() -> set[str]:
    """Dotted keys of config.example.yaml, the commented-out examples included."""
    keys: set[str] = set()
    stack: list[tuple[int, str]] = []
    for raw in (ROOT / "config.example.yaml").read_text().splitlines():
        line = re.sub(r"^(\s*)# ?", r"\1", raw) if raw.lstrip().startswith("#") else raw
        match = _KEY.match(line)
        if match is None:
            continue
        indent = len(match["indent"]) + (2 if match["item"] else 0)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = ".".join([*(name for _, name in stack), match["key"]])
        keys.add(key)
        stack.append((indent, match["key"]))
    return keys


def settings_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Dotted keys of every field, through nested sections and lists of sections."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        if field.exclude:
            continue  # not a key of the file (a secret read from the environment)
        key = f"{prefix}{field.alias or name}"  # the alias is what the file says (smtp.from)
        keys.add(key)
        annotation = field.annotation
        nested = [annotation, *get_args(annotation)] if get_origin(annotation) else [annotation]
        models = [c for c in nested if isinstance(c, type) and issubclass(c, BaseModel)]
        if get_origin(annotation) is dict and models:  # named entries (providers.openai): "*"
            key = f"{key}.*"
            keys.add(key)
        for candidate in nested:
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                keys |= settings_keys(candidate, f"{key}.")
    return keys


def test_config_example_documents_every_setting_and_nothing_else() -> None:
    # `upstreams:` entries take every key of `upstream:` (the example says so): a key shown in
    # either place documents both.
    # `reconcile.providers` is keyed by provider: its entries all take the same keys.
    def merged(keys: set[str]) -> set[str]:
        keys = {re.sub(r"^upstreams\.", "upstream.", key) for key in keys}
        return {re.sub(r"^(reconcile\.providers)\.(openai|anthropic)\b", r"\1.*", k) for k in keys}

    documented = merged(documented_keys())
    known = merged(settings_keys(Settings))
    assert {"upstreams", "prices.output_audio", "database.spool_dir"} <= documented
    assert sorted(known - documented) == [], "settings missing from config.example.yaml"
    assert sorted(documented - known) == [], "keys in config.example.yaml that Settings lacks"


def test_config_example_loads_as_the_defaults() -> None:
    example = load_settings(ROOT / "config.example.yaml", environ={})
    assert example == Settings()
