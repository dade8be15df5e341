"""Strict agent config: every bad key or value is one line with file, line, key path and reason."""

from __future__ import annotations

import dataclasses
import json
import random
import re
from pathlib import Path

import pytest

from facelite.errors import ConfigError
from facelite.service.config import AgentConfig, Backoff, ConfigErrors, MqttConfig, load_config
from facelite.service.events import Topics
from facelite.service.schema import Section, rule_of, sections_of

BASE = """\
device_id = "frontdoor"
state_interval_s = 60
log_level = "INFO"

[[cameras]]
name = "door"
source = 0
fps_limit = 5

[[cameras]]
name = "yard"
source = "rtsp://cam.local/stream"

[models]
detector = "models/det"
embedder = "models/emb"
runtime = "auto"
num_threads = 2

[detection]
min_face = 40
score_threshold = 0.7

[quality]
min_size = 60
min_sharpness = 0.0
max_yaw = 45
max_pitch = 30

[matching]
stranger_accept_rate = 1e-3
ambiguous_margin = 0.05

[tracking]
iou_threshold = 0.3
max_missed_frames = 10
max_missed_seconds = 2.0
min_votes = 3
recheck_interval_s = 5.0

[mqtt]
host = "broker.local"
port = 1883
keepalive = 60
qos = 1
discovery = true

[mqtt.tls]

[mqtt.reconnect]
initial_s = 1

[spool]
path = "state/spool.sqlite"
max_messages = 100
max_bytes = 1048576

[gallery]
path = "state/gallery.sqlite"
"""


def set_key(text: str, table: str, key: str, value: str) -> tuple[str, int]:
    """Set ``key = value`` in ``table`` ('' = root, 'cameras#1' = second [[cameras]]); returns text and its line."""
    lines = text.splitlines()
    if table == "":
        start = -1
    else:
        name, _, index = table.partition("#")
        pattern = rf"^\[\[{re.escape(name)}\]\]$" if index else rf"^\[{re.escape(name)}\]$"
        headers = [i for i, line in enumerate(lines) if re.match(pattern, line)]
        start = headers[int(index or 0)]
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    for i in range(start + 1, end):
        if re.match(rf"^{re.escape(key)}\s*=", lines[i]):
            lines[i] = f"{key} = {value}"
            return "\n".join(lines) + "\n", i + 1
    lines.insert(start + 1, f"{key} = {value}")
    return "\n".join(lines) + "\n", start + 2


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "mqtt_pw").write_text("s3cret\n")
    (tmp_path / "ca.crt").write_text("not checked here, only its presence\n")
    return tmp_path


def problems_of(path: Path) -> list:
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    return list(info.value.problems)


CASES = [
    ("", "device_id", '"front door!"', "device_id", "letters, digits"),
    ("", "state_interval_s", "0", "state_interval_s", "must be >= 1"),
    ("", "log_level", '"LOUD"', "log_level", "must be one of"),
    ("", "surprise", "1", "surprise", "unknown key"),
    ("", "device_idd", '"x"', "device_idd", "did you mean 'device_id'"),
    ("cameras#0", "fps_limit", "500", "cameras[0].fps_limit", "must be <= 120"),
    ("cameras#0", "fps_limit", "0", "cameras[0].fps_limit", "must be > 0"),
    ("cameras#0", "fsp_limit", "5", "cameras[0].fsp_limit", "did you mean 'fps_limit'"),
    ("cameras#0", "name", '"front door"', "cameras[0].name", "letters, digits"),
    ("cameras#1", "source", "-1", "cameras[1].source", "must be >= 0"),
    ("cameras#1", "source", "true", "cameras[1].source", "camera index, device path, URL"),
    ("cameras#1", "source", '""', "cameras[1].source", "must not be empty"),
    ("models", "runtime", '"tensorflow"', "models.runtime", "must be one of"),
    ("models", "num_threads", "0", "models.num_threads", "must be >= 1"),
    ("models", "num_threads", "2.5", "models.num_threads", "must be an integer"),
    ("models", "detector", "3", "models.detector", "must be a path"),
    ("detection", "min_face", "4", "detection.min_face", "must be >= 8"),
    ("detection", "score_threshold", "1.5", "detection.score_threshold", "must be < 1"),
    ("quality", "max_yaw", "91", "quality.max_yaw", "must be <= 90"),
    ("quality", "min_sharpness", "-1", "quality.min_sharpness", "must be >= 0"),
    ("quality", "max_pitch", '"steep"', "quality.max_pitch", "must be a number"),
    ("matching", "stranger_accept_rate", "0.5", "matching.stranger_accept_rate", "must be < 0.5"),
    ("matching", "stranger_accept_rate", "0", "matching.stranger_accept_rate", "must be > 0"),
    ("matching", "threshold", "2", "matching.threshold", "must be <= 1"),
    ("matching", "ambiguous_margin", "-0.1", "matching.ambiguous_margin", "must be >= 0"),
    ("tracking", "iou_threshold", "0", "tracking.iou_threshold", "must be > 0"),
    ("tracking", "max_missed_frames", "-1", "tracking.max_missed_frames", "must be >= 0"),
    ("tracking", "max_missed_seconds", "0", "tracking.max_missed_seconds", "must be > 0"),
    ("tracking", "min_votes", "0", "tracking.min_votes", "must be >= 1"),
    ("tracking", "recheck_interval_s", "true", "tracking.recheck_interval_s", "must be a number"),
    ("mqtt", "port", "70000", "mqtt.port", "must be <= 65535"),
    ("mqtt", "port", '"1883"', "mqtt.port", "must be an integer"),
    ("mqtt", "host", '""', "mqtt.host", "must not be empty"),
    ("mqtt", "keepalive", "1", "mqtt.keepalive", "must be >= 5"),
    ("mqtt", "qos", "3", "mqtt.qos", "must be <= 2"),
    ("mqtt", "discovery", '"no"', "mqtt.discovery", "must be true or false"),
    ("mqtt", "publish_crops", "1", "mqtt.publish_crops", "must be true or false"),
    ("mqtt", "base_topic", '"home/#"', "mqtt.base_topic", "without '+', '#'"),
    ("mqtt", "discovery_prefix", '"/ha"', "mqtt.discovery_prefix", "or empty levels"),
    ("mqtt", "password", '"hunter2"', "mqtt.password", "never put a password in the config"),
    ("mqtt", "password_env", '"1BAD"', "mqtt.password_env", "environment variable name"),
    ("mqtt", "password_file", '"secrets/missing"', "mqtt.password_file", "file not found"),
    ("mqtt.tls", "ca_file", '"nope.crt"', "mqtt.tls.ca_file", "file not found"),
    ("mqtt.tls", "cafile", '"ca.crt"', "mqtt.tls.cafile", "did you mean 'ca_file'"),
    ("mqtt.reconnect", "initial_s", "0", "mqtt.reconnect.initial_s", "must be > 0"),
    ("mqtt.reconnect", "jitter", "2", "mqtt.reconnect.jitter", "must be <= 1"),
    ("spool", "max_messages", "0", "spool.max_messages", "must be >= 1"),
    ("spool", "max_bytes", "10", "spool.max_bytes", "must be >= 1024"),
    ("gallery", "key_file", '"no.key"', "gallery.key_file", "file not found"),
]


@pytest.mark.parametrize(("table", "key", "value", "path", "reason"), CASES, ids=[c[3] + "=" + c[2] for c in CASES])
def test_each_bad_key_or_value_is_one_line_with_its_key_path(
    config_dir: Path, table: str, key: str, value: str, path: str, reason: str
) -> None:
    text, line = set_key(BASE, table, key, value)
    file = config_dir / "agent.toml"
    file.write_text(text)
    problems = problems_of(file)
    assert len(problems) == 1, problems
    (problem,) = problems
    assert (problem.key, problem.line, problem.file) == (path, line, str(file))
    assert reason in problem.reason
    assert str(problem) == f"{file}:{line}: {path}: {problem.reason}"
    assert "\n" not in problem.reason and "Traceback" not in problem.reason


def test_missing_required_keys_point_at_their_table(config_dir: Path) -> None:
    text = BASE.replace('host = "broker.local"\n', "").replace('embedder = "models/emb"\n', "")
    file = config_dir / "agent.toml"
    file.write_text(text)
    problems = problems_of(file)
    lines = text.splitlines()
    assert [(p.key, p.reason, p.line) for p in problems] == [
        ("models.embedder", "required key is missing", lines.index("[models]") + 1),
        ("mqtt.host", "required key is missing", lines.index("[mqtt]") + 1),
    ]


def test_several_problems_give_one_line_each_in_file_order(config_dir: Path) -> None:
    # Edited top to bottom, so each returned line number stays valid.
    text, typo_line = set_key(BASE, "", "devise", '"x"')
    text, fps_line = set_key(text, "cameras#1", "fps_limit", "-3")
    text, port_line = set_key(text, "mqtt", "port", "0")
    file = config_dir / "agent.toml"
    file.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(file)
    out = str(info.value).splitlines()
    assert len(out) == 3
    assert out[0].startswith(f"{file}:{typo_line}: devise: unknown key")
    assert out[1].startswith(f"{file}:{fps_line}: cameras[1].fps_limit: must be > 0")
    assert out[2].startswith(f"{file}:{port_line}: mqtt.port: must be >= 1")


def test_cross_field_rules(config_dir: Path) -> None:
    text, _ = set_key(BASE, "mqtt.reconnect", "max_s", "0.5")  # below initial_s = 1
    text, _ = set_key(text, "cameras#1", "name", '"door"')  # same name as camera 0
    file = config_dir / "agent.toml"
    file.write_text(text)
    by_key = {p.key: p for p in problems_of(file)}
    lines = text.splitlines()
    assert "must be >= initial_s" in by_key["mqtt.reconnect"].reason
    assert by_key["mqtt.reconnect"].line == lines.index("[mqtt.reconnect]") + 1
    assert "camera names must be unique (repeated: door)" in by_key["cameras"].reason
    assert by_key["cameras"].line == lines.index("[[cameras]]") + 1

    # A section's own rules run once its fields are valid, so this one is checked alone.
    text, _ = set_key(BASE, "mqtt", "password_env", '"MQTT_PW"')  # no username
    file.write_text(text)
    (problem,) = problems_of(file)
    assert (problem.key, problem.reason) == ("mqtt", "a password needs a username")
    assert problem.line == text.splitlines().index("[mqtt]") + 1


def test_yaml_errors_use_node_lines_and_refuse_duplicate_keys(config_dir: Path) -> None:
    text = """\
device_id: frontdoor
cameras:
  - name: door
    source: /dev/video0
  - name: yard
    source: clips/yard.mp4
    fps_limit: 0
models:
  detector: models/det
  embedder: models/emb
  threads: 2
mqtt:
  host: broker.local
  port: 1883
  port: 1884
"""
    file = config_dir / "agent.yaml"
    file.write_text(text)
    lines = text.splitlines()
    got = {(p.key, p.line, p.reason.split(" (")[0]) for p in problems_of(file)}
    assert got == {
        ("cameras[1].fps_limit", lines.index("    fps_limit: 0") + 1, "must be > 0.0"),
        ("models.threads", lines.index("  threads: 2") + 1, "unknown key"),
        ("mqtt.port", lines.index("  port: 1884") + 1, "duplicate key"),
    }


def test_yaml_and_toml_load_the_same_config(config_dir: Path) -> None:
    (config_dir / "a.toml").write_text(BASE)
    yaml_text = """\
device_id: frontdoor
state_interval_s: 60
log_level: info
cameras:
  - {name: door, source: 0, fps_limit: 5}
  - {name: yard, source: "rtsp://cam.local/stream"}
models: {detector: models/det, embedder: models/emb, runtime: auto, num_threads: 2}
detection: {min_face: 40, score_threshold: 0.7}
quality: {min_size: 60, min_sharpness: 0.0, max_yaw: 45, max_pitch: 30}
matching: {stranger_accept_rate: 1e-3, ambiguous_margin: 0.05}
tracking: {iou_threshold: 0.3, max_missed_frames: 10, max_missed_seconds: 2.0, min_votes: 3,
           recheck_interval_s: 5.0}
mqtt: {host: broker.local, port: 1883, keepalive: 60, qos: 1, discovery: true, tls: {}, reconnect: {initial_s: 1}}
spool: {path: state/spool.sqlite, max_messages: 100, max_bytes: 1048576}
gallery: {path: state/gallery.sqlite}
"""
    (config_dir / "a.yml").write_text(yaml_text)
    assert load_config(config_dir / "a.toml") == load_config(config_dir / "a.yml")


def test_relative_paths_resolve_against_the_config_folder(
    config_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    text, _ = set_key(BASE, "mqtt", "username", '"agent"')
    text, _ = set_key(text, "mqtt", "password_file", '"secrets/mqtt_pw"')
    text, _ = set_key(text, "cameras#0", "source", '"frames"')
    file = config_dir / "agent.toml"
    file.write_text(text)
    elsewhere = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(elsewhere)  # the working directory must not matter
        config = load_config(file)
    root = config_dir.resolve()
    assert config.models.detector == root / "models/det"
    assert config.spool.path == root / "state/spool.sqlite"
    assert config.gallery.path == root / "state/gallery.sqlite"
    assert config.cameras[0].source == str(root / "frames")
    assert config.cameras[1].source == "rtsp://cam.local/stream"  # URLs, indices and devices stay as given
    assert config.mqtt is not None and config.mqtt.password_file == str(root / "secrets/mqtt_pw")
    assert config.mqtt.password({}) == "s3cret"  # trailing newline of the file is not part of it


def test_password_from_env_or_systemd_credentials(config_dir: Path) -> None:
    from_env = MqttConfig(host="h", username="u", password_env="FACELITE_PW")
    assert from_env.password({"FACELITE_PW": "pw1"}) == "pw1"
    with pytest.raises(ConfigError, match=r"environment variable FACELITE_PW is not set \(mqtt.password_env\)"):
        from_env.password({})
    credential = MqttConfig(host="h", username="u", password_file="$CREDENTIALS_DIRECTORY/mqtt_pw")
    assert credential.password({"CREDENTIALS_DIRECTORY": str(config_dir / "secrets")}) == "s3cret"
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY"):
        credential.password({})
    assert MqttConfig(host="h").password({}) is None


def test_file_level_errors_are_one_line(config_dir: Path) -> None:
    cases = {
        "missing.toml": None,
        "broken.toml": 'device_id = "x"\n[mqtt\nport = 1\n',
        "broken.yaml": "device_id: x\ncameras: [\n",
        "list.yaml": "- a\n- b\n",
        "agent.ini": "[x]\n",
    }
    for name, content in cases.items():
        file = config_dir / name
        if content is not None:
            file.write_text(content)
        with pytest.raises(ConfigError) as info:
            load_config(file)
        message = str(info.value)
        assert "\n" not in message and str(file) in message, message
    with pytest.raises(ConfigError, match=r"invalid TOML: .*line 2"):
        load_config(config_dir / "broken.toml")


def test_example_config_is_valid_and_covers_every_section(tmp_path: Path) -> None:
    file = tmp_path / "example.toml"
    file.write_text(AgentConfig.example_toml())
    config = load_config(file)
    assert config.device_id == "frontdoor" and config.mqtt is not None
    text = AgentConfig.example_toml()
    sections = sections_of(AgentConfig)
    for field in dataclasses.fields(AgentConfig):
        if field.name not in sections:
            assert re.search(rf"^{field.name} = ", text, re.M), field.name
        else:
            assert f"[{field.name}]" in text or f"[[{field.name}]]" in text, field.name


def _all_sections(section: type[Section], seen: set[type[Section]]) -> set[type[Section]]:
    seen.add(section)
    for inner in sections_of(section).values():
        if inner not in seen:
            _all_sections(inner, seen)
    return seen


def test_every_field_is_described_and_every_number_bounded() -> None:
    sections = _all_sections(AgentConfig, set())
    assert len(sections) == 15  # every table of the example config, Backoff included
    for section in sections:
        numbers = {name: t for name, t in typing_hints(section).items() if t in (int, float, int | None, float | None)}
        for field in dataclasses.fields(section):
            rule = rule_of(field)
            assert rule.description, f"{section.__name__}.{field.name} has no description"
            if field.name in numbers:  # int | str (camera source) has its own validator
                assert rule.bounded == (True, True), f"{section.__name__}.{field.name} is not bounded on both sides"


def typing_hints(section: type[Section]) -> dict[str, object]:
    import typing

    return typing.get_type_hints(section)


def test_every_section_refuses_unknown_keys_and_checks_values_built_in_code() -> None:
    from facelite.service.config import TrackingConfig
    from facelite.service.schema import SchemaError

    with pytest.raises(SchemaError, match=r"TrackingConfig: min_votes: must be >= 1 \(got 0\)"):
        TrackingConfig(min_votes=0)
    with pytest.raises(SchemaError, match=r"MqttConfig: port: must be an integer \(got '1883'\)"):
        MqttConfig(host="h", port="1883")  # type: ignore[arg-type]
    with pytest.raises(SchemaError, match=r"Backoff: max_s \(1.0\) must be >= initial_s \(5.0\)"):
        Backoff(initial_s=5, max_s=1)
    with pytest.raises(TypeError):
        TrackingConfig(min_vote=3)  # type: ignore[call-arg]


def test_backoff_grows_exponentially_is_capped_and_jittered() -> None:
    fixed = Backoff(initial_s=0.5, max_s=10, multiplier=2, jitter=0)
    assert [fixed.delay(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert fixed.delay(10_000) == 10  # no overflow after a long outage
    jittered = Backoff(initial_s=1, max_s=60, multiplier=2, jitter=0.5)
    rng = random.Random(7)
    for attempt in range(1, 10):
        base = min(60, 2 ** (attempt - 1))
        samples = [jittered.delay(attempt, rng) for _ in range(50)]
        assert all(base * 0.5 <= s <= base for s in samples)
        assert len(set(samples)) > 1  # jitter really spreads reconnects


@pytest.mark.parametrize(
    "value", ["facelite", "home/faces", "a//b", "/ha", "ha/", "home/#", "a+b", "", "x/y/z", "caf\u00e9/cam"]
)
def test_one_topic_prefix_rule_for_check_config_and_the_agent(config_dir: Path, value: str) -> None:
    """--check-config (load_config) and the agent's Topics judge a prefix by the same rule: a prefix the config
    accepts never fails when the agent builds its topics, and a refusal names a key the config really has."""
    text, _ = set_key(BASE, "mqtt", "base_topic", json.dumps(value))
    file = config_dir / "agent.toml"
    file.write_text(text)
    try:
        load_config(file)
        config_ok = True
    except ConfigErrors as errors:
        assert [p.key for p in errors.problems] == ["mqtt.base_topic"], errors.problems
        config_ok = False
    try:
        Topics("frontdoor", prefix=value)
        topics_ok = True
    except ConfigError as exc:
        assert "mqtt.base_topic" in str(exc)  # the config key, not an internal field name
        topics_ok = False
    assert config_ok == topics_ok
    assert config_ok == (value in ("facelite", "home/faces", "x/y/z", "caf\u00e9/cam"))
