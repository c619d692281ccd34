from pathlib import Path

import pytest

from proxy.config import ConfigError, Settings, load_settings


def test_defaults_match_the_contract() -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.server.port == 8080
    assert settings.upstream.url == "https://api.openai.com/v1"
    assert settings.database.url == "sqlite+aiosqlite:///./tallyproxy.db"
    assert settings.admin_token is None


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "tally.yaml"
    config.write_text(
        "server:\n  port: 9000\n  host: 0.0.0.0\nupstream:\n  url: http://file:1/v1/\n"
        "database:\n  url: sqlite+aiosqlite:///file.db\n"
    )
    env = {"TALLYPROXY_CONFIG": str(config), "TALLYPROXY_UPSTREAM_URL": "http://env:2/v1"}
    settings = load_settings(None, {("server", "port"): 9100, ("server", "host"): None}, env)
    assert settings.server.port == 9100
    assert settings.server.host == "0.0.0.0"
    assert settings.upstream.url == "http://env:2/v1"
    assert settings.database.url == "sqlite+aiosqlite:///file.db"


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("server:\n  port: 70000\n", "config key 'server.port'"),
        ("upstream:\n  url: api.openai.com\n", "must start with http://"),
        ("database:\n  url: postgresql://u@h/db\n", "postgresql+asyncpg://"),
        ("database:\n  url: sqlite:///x.db\n", "sqlite+aiosqlite:///"),
        ("server:\n  prot: 1\n", "config key 'server.prot': unknown key"),
        ("- a\n- b\n", "must hold a mapping"),
        ("server: [\n", "not valid YAML"),
        ("server:\n  log_level: loud\n", "config key 'server.log_level'"),
        (
            "database:\n  url: postgresql+asyncpg://u@p/db\n  read_url: sqlite+aiosqlite:///r.db\n",
            "config key 'database.read_url': .*SQLite has no replicas",
        ),
        (
            "database:\n  url: postgresql+asyncpg://u@p/db\n  read_url: postgres://u@r/db\n",
            "config key 'database.read_url': .*use the asyncpg driver",
        ),
        (
            "database:\n  read_url: postgresql+asyncpg://u@r/db\n",
            "config key 'database': .*read_url needs a Postgres primary",
        ),
        ("database:\n  read_max_lag_seconds: -1\n", "config key 'database.read_max_lag_seconds'"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, yaml_text: str, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("+", r"\+")):
        load_settings(config, environ={})


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.yaml", environ={})


def test_settings_are_frozen() -> None:
    settings = load_settings(environ={})
    with pytest.raises(ValueError):
        settings.server.port = 1  # type: ignore[misc]


EXAMPLE = Path(__file__).parents[2] / "config.example.yaml"


def test_example_config_holds_the_defaults() -> None:
    assert load_settings(EXAMPLE, environ={}) == Settings()


def _commented_block(key: str) -> str:
    """The example's commented-out ``key:`` block, uncommented."""
    lines = EXAMPLE.read_text().splitlines()
    start = lines.index(f"# {key}:")
    block = [lines[start][2:]]
    for line in lines[start + 1 :]:
        if not line.startswith("#   "):
            break
        block.append(line[2:])
    return "\n".join(block) + "\n"


def test_example_config_commented_blocks_are_valid(tmp_path: Path) -> None:
    config = tmp_path / "full.yaml"
    config.write_text("".join(_commented_block(k) for k in ("upstreams", "prices", "tokenizers")))
    env = {
        name: "secret"
        for name in (
            "ANTHROPIC_API_KEY",
            "AZURE_OPENAI_API_KEY",
            "DEEPSEEK_API_KEY",
            "DASHSCOPE_API_KEY",
            "GEMINI_API_KEY",
        )
    }
    settings = load_settings(config, environ=env)
    assert [u.name for u in settings.routes] == [
        "anthropic", "gemini", "gemini-openai", "azure", "deepseek", "qwen", "local-vllm", "openai"
    ]  # fmt: skip
    assert settings.routes[1].api_key == "secret"
    assert len(settings.prices) == 3 and len(settings.tokenizers) == 2


def test_missing_key_variable_is_named(tmp_path: Path) -> None:
    config = tmp_path / "k.yaml"
    config.write_text("upstream:\n  api_key_env: NOT_SET_ANYWHERE\n")
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE is not set"):
        load_settings(config, environ={})


def test_read_url_from_env_and_flag() -> None:
    env = {
        "TALLYPROXY_DATABASE_URL": "postgresql+asyncpg://u@primary/db",
        "TALLYPROXY_DATABASE_READ_URL": "postgresql+asyncpg://u@standby/db",
    }
    settings = load_settings(None, {}, env)
    assert settings.database.read_url == "postgresql+asyncpg://u@standby/db"
    assert settings.database.read_max_lag_seconds == 10.0
    flag = {("database", "read_url"): "postgresql+asyncpg://u@other/db"}
    assert load_settings(None, flag, env).database.read_url == "postgresql+asyncpg://u@other/db"


def test_a_replica_of_sqlite_stops_the_command_with_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from proxy.cli import main

    code = main(
        [
            "report",
            "--database-url",
            f"sqlite+aiosqlite:///{tmp_path}/t.db",
            "--database-read-url",
            "postgresql+asyncpg://u@standby/db",
        ]
    )
    assert code == 2
    assert "config key 'database': Value error, read_url needs a Postgres primary" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "t.db").exists()
