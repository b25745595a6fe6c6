"""Settings: defaults < TOML file < environment, and a ConfigError that names the bad setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from symbi_common.errors import ConfigError
from symbi_common.settings import Settings, load_settings
from symbi_common.settings_checks import UNSUPPORTED, parse_size
from symbi_common.settings_env import ENV_ALIASES

EXAMPLE = Path(__file__).parents[3] / "examples" / "symbi.toml"

TOML = """
[runtime]
max_concurrent_agents = 50
mode = "production"

[nats]
url = "nats://file:4222"
duplicate_window_s = 60.0

[telemetry]
log_level = "warning"

[context]
vector_backend = "qdrant"

[context.qdrant]
host = "qdrant.file"
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "symbi.toml"
    path.write_text(TOML)
    return path


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # key paths depend on which keyring directories exist under ./.symbi
    s = load_settings(env={})
    assert s == Settings()
    assert s.runtime.max_concurrent_agents == 10_000
    assert s.nats.url == "nats://127.0.0.1:4222"
    assert s.telemetry.log_level == "info"
    assert s.signing_key_path("lifecycle") == Path(".symbi/keys/signing.key")
    assert s.wrap_key_path("lifecycle") == Path(".symbi/keys/wrap.key")
    assert s.root_public_key_path() == Path(".symbi/keys/root.pub")
    assert s.nats.tls_ca == ""


def test_toml_file(config: Path) -> None:
    s = load_settings(config, env={})
    assert s.runtime.max_concurrent_agents == 50
    assert s.runtime.mode == "production"
    assert s.runtime.mode == "production"
    assert s.nats.replicas == 1  # untouched keys keep their defaults
    assert s.nats.url == "nats://file:4222"
    assert s.nats.duplicate_window_s == 60.0
    assert s.telemetry.log_level == "warning"
    assert s.context.qdrant.host == "qdrant.file"
    assert s.context.qdrant.port == 6333
    # The file can also come from SYMBI_CONFIG_PATH; an explicit path wins over it.
    assert load_settings(env={"SYMBI_CONFIG_PATH": str(config)}) == s
    assert load_settings(config, env={"SYMBI_CONFIG_PATH": "/nowhere.toml"}) == s


def test_environment_beats_file(config: Path) -> None:
    env = {
        "SYMBI_RUNTIME__MAX_CONCURRENT_AGENTS": "75",  # section key, converted from text
        "SYMBI_NATS_URL": "nats://env:4222",  # documented alias
        "SYMBI_LOG_LEVEL": "debug",
        "SYMBIONT_VECTOR_BACKEND": "qdrant",
        "SYMBIONT_VECTOR_PORT": "7000",
        "SYMBI_CONTEXT__QDRANT__HOST": "qdrant.env",  # nested section
        "SYMBI_DATABASE_URL": "postgresql://db/symbi",
        "SYMBI_KEYS_DIR": "/keys",
        "SYMBI_HTTP_PORT": "9000",
        "SYMBI_SECURITY__CRYPTO_PROVIDER": "libsodium",
        "SYMBI_LOG_FORMAT": "",  # empty: not set
        "UNRELATED": "x",
    }
    s = load_settings(config, env=env)
    assert s.runtime.max_concurrent_agents == 75
    assert s.runtime.mode == "production"  # from the file
    assert s.nats.url == "nats://env:4222"
    assert s.telemetry.log_level == "debug"
    assert s.telemetry.log_format == "json"
    assert s.context.qdrant.port == 7000
    assert s.context.qdrant.host == "qdrant.env"
    assert s.database.url == "postgresql://db/symbi"
    assert s.service.http_port == 9000
    assert s.security.crypto_provider == "libsodium"
    assert s.signing_key_path("policy") == Path("/keys/signing.key")


def test_section_variable_beats_alias() -> None:
    s = load_settings(env={"SYMBI_NATS_URL": "nats://alias", "SYMBI_NATS__URL": "nats://section"})
    assert s.nats.url == "nats://section"


def test_key_paths_can_be_set_one_by_one() -> None:
    s = load_settings(env={"SYMBI_SIGNING_KEY_PATH": "/run/secrets/sign.key", "SYMBI_WRAP_KEY_PATH": "/w.key"})
    assert s.signing_key_path("anything") == Path("/run/secrets/sign.key")
    assert s.wrap_key_path("anything") == Path("/w.key")


def test_keys_dir_is_a_service_directory_or_a_whole_keyring(tmp_path: Path) -> None:
    from symbi_common.keyfiles import init_keyring

    init_keyring(tmp_path / "keys")
    own = load_settings(env={"SYMBI_KEYS_DIR": str(tmp_path / "keys" / "audit")})
    assert own.signing_key_path("audit") == tmp_path / "keys" / "audit" / "signing.key"
    assert own.root_public_key_path("audit") == tmp_path / "keys" / "audit" / "root.pub"
    whole = load_settings(env={"SYMBI_KEYS_DIR": str(tmp_path / "keys")})
    assert whole.wrap_key_path("context") == tmp_path / "keys" / "context" / "wrap.key"


def test_nats_tls_settings() -> None:
    s = load_settings(env={"SYMBI_NATS_TLS_CA": "/ca.pem", "SYMBI_NATS_TLS_CERT": "/c.pem", "SYMBI_NATS_TLS_KEY": "/k"})
    assert (s.nats.tls_ca, s.nats.tls_cert, s.nats.tls_key) == ("/ca.pem", "/c.pem", "/k")


def test_every_alias_names_a_real_setting() -> None:
    for name, dotted in ENV_ALIASES.items():
        if dotted.split(".")[0] in UNSUPPORTED:
            continue  # documented, refused with a reason (test_unhonoured_keys_are_refused)
        node: object = Settings()
        for part in dotted.split("."):
            assert hasattr(node, part), f"{name} -> {dotted}"
            node = getattr(node, part)


@pytest.mark.parametrize(
    ("toml", "env", "setting"),
    [
        ("[runtime]\nnope = 1\n", {}, "runtime.nope"),
        ("[nope]\nx = 1\n", {}, "nope"),
        ("[context.qdrant]\nnope = 1\n", {}, "context.qdrant.nope"),
        ("[runtime]\nmax_concurrent_agents = 'lots'\n", {}, "runtime.max_concurrent_agents"),
        ("[telemetry]\nlog_level = 'loud'\n", {}, "telemetry.log_level"),
        ("[context]\nqdrant = 5\n", {}, "context.qdrant"),
        ("", {"SYMBI_RUNTIME__NOPE": "1"}, "runtime.nope"),
        ("", {"SYMBI_NATS__REPLICAS": "three"}, "nats.replicas"),
        ("", {"SYMBI_LOG_LEVEL": "verbose"}, "telemetry.log_level"),
        ("", {"MCP_SERVER_DISCOVERY": "maybe"}, "mcp.discovery_enabled"),
        ("", {"SYMBIONT_VECTOR_BACKEND": "faiss"}, "context.vector_backend"),
        ("", {"SYMBI_HTTP_PORT": "eighty"}, "service.http_port"),
        ("[runtime]\nmode = 'development'\n", {"SYMBI_RUNTIME_MODE": "staging"}, "runtime.mode"),
    ],
)
def test_config_error_names_the_setting(tmp_path: Path, toml: str, env: dict[str, str], setting: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as exc:
        load_settings(path, env=env)
    assert exc.value.setting == setting
    assert str(exc.value).startswith(f"setting {setting}: ")


def test_unknown_setting_message(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^setting runtime\.nope: unknown setting$"):
        load_settings(env={"SYMBI_RUNTIME__NOPE": "1"})


def test_bad_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as exc:
        load_settings(tmp_path / "missing.toml", env={})
    assert exc.value.setting == "SYMBI_CONFIG_PATH"
    bad = tmp_path / "bad.toml"
    bad.write_text("[runtime\nx = ")
    with pytest.raises(ConfigError, match="not valid TOML") as exc:
        load_settings(env={"SYMBI_CONFIG_PATH": str(bad)})
    assert exc.value.setting == "SYMBI_CONFIG_PATH"


def test_scalar_where_a_section_is_expected() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(env={"SYMBI_RUNTIME": "x", "SYMBI_NATS__URL__X": "y"})
    assert exc.value.setting == "nats.url"


@pytest.mark.parametrize(
    ("toml", "env", "setting", "says"),
    [
        ("[security]\nenforce_policies = false\n", {}, "security.enforce_policies", "never runs without policy"),
        ("", {"SYMBI_SECURITY__AUDIT_ENABLED": "false"}, "security.audit_enabled", "cannot be turned off"),
        ("", {"SYMBI_AUDIT_STORAGE": "s3"}, "security.audit_storage", "not available"),
        ("[security]\ncrypto_provider = 'ring'\n", {}, "security.crypto_provider", "libsodium"),
        ("", {"SYMBI_CRYPTO_PROVIDER": "openssl"}, "security.crypto_provider", "libsodium"),
        ("[runtime]\nscheduler_threads = 8\n", {}, "runtime.scheduler_threads", "not supported"),
        ("[runtime]\nmessage_buffer_size = 1\n", {}, "runtime.message_buffer_size", "not supported"),
        ("", {"SYMBI_RUNTIME__GC_INTERVAL_MS": "100"}, "runtime.gc_interval_ms", "not supported"),
        ("[runtime]\nmax_concurrent_agents = 0\n", {}, "runtime.max_concurrent_agents", "at least 1"),
        ("[mcp]\ntool_verification = 'none'\n", {}, "mcp.tool_verification", 'the only mode is "strict"'),
        ("[mcp]\nconnection_timeout_s = 0\n", {}, "mcp.connection_timeout_s", "more than 0"),
        ("", {"SYMBI_MCP__MAX_CONCURRENT_CONNECTIONS": "0"}, "mcp.max_concurrent_connections", "at least 1"),
        ("[context]\ncontext_cache_size = 'big'\n", {}, "context.context_cache_size", "not a size"),
        ("[context]\nembedding_dimension = 1536\n", {}, "context.embedding_dimension", "384"),
        ("[context]\nembedding_model = 'x'\n", {}, "context.embedding_model", "openai"),
        ("[context.qdrant]\nhost = 'q'\n", {}, "context.qdrant.host", "only used with"),
        (
            "[context]\nvector_backend = 'lancedb'\nvector_quantization = 'int8'\n",
            {},
            "context.vector_quantization",
            "unquantized",
        ),
        ("", {"SYMBIONT_VECTOR_DIMENSION": "3"}, "SYMBIONT_VECTOR_DIMENSION", "unknown variable"),
        (
            "[runtime]\nmode = 'production'\n",
            {"SYMBI_POLICY__ENFORCEMENT": "allow-all"},
            "policy.enforcement",
            "production",
        ),
    ],
)
def test_unhonoured_keys_are_refused(tmp_path: Path, toml: str, env: dict[str, str], setting: str, says: str) -> None:
    """A documented key is honoured or refused at start-up, never accepted and ignored."""
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as exc:
        load_settings(path, env=env)
    assert exc.value.setting == setting
    assert says in str(exc.value)


def test_the_documented_example_starts() -> None:
    s = load_settings(EXAMPLE, env={})
    assert s.security.enforce_policies is True
    assert load_settings(EXAMPLE, env={"SYMBIONT_VECTOR_BACKEND": "lancedb"}).context.vector_backend == "lancedb"
    assert load_settings(
        env={"SYMBI_CONTEXT__EMBEDDING_PROVIDER": "openai", "SYMBI_CONTEXT__EMBEDDING_DIMENSION": "3072"}
    )


def test_sizes() -> None:
    assert parse_size("1GB", setting="x") == 10**9
    assert parse_size("512 MiB", setting="x") == 512 * 2**20
    assert parse_size("0", setting="x") == 0
    with pytest.raises(ConfigError):
        parse_size("-1GB", setting="x")
