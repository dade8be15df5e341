"""Security of the real agent and CLI: MQTT over TLS with a password from systemd credentials or the environment,
secrets kept out of logs and messages, private files (gallery, spool, export), encryption at rest and forgetting.

Real mosquitto with TLS (throw-away CA, optional client certificate) and a password file; the real
`python -m facelite` / `python -m facelite.cli` processes; photos and models as shipped.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from broker import MosquittoBroker, Subscriber, TlsFiles, make_tls_files
from helpers import wait_until
from soak import AgentProcess, base_config, events_of, pick, unique_events, write_config

from facelite.recognition.matching import check_vector
from facelite.recognition.names import slugify
from facelite.tools.demo import plan, write_video
from facelite.vision.detect import create_detector
from facelite.vision.embed import Embedder
from facelite.vision.imageio import read_image

REPO = Path(__file__).resolve().parents[1]
DEVICE = "sec"
AGENT_USER = "facelite"


@dataclass(frozen=True)
class Setup:
    detector: Path
    embedder: Path
    tls: TlsFiles
    rogue: TlsFiles  # another CA and its certificates: the broker must not trust it, nor the agent it
    faces: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, faces_dir: Path, models_dir: Path) -> Setup:
    work = tmp_path_factory.mktemp("sec")
    return Setup(
        pick(models_dir, "blazeface"),
        pick(models_dir, "mobilefacenet"),
        make_tls_files(work / "tls"),
        make_tls_files(work / "rogue"),
        faces_dir,
    )


def cli(*args: str, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "facelite.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=180,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
    )


def models(setup: Setup, gallery: Path) -> list[str]:
    return ["--detector", str(setup.detector), "--embedder", str(setup.embedder), "--gallery", str(gallery)]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def private_files(folder: Path) -> dict[str, str]:
    return {p.name: oct(mode(p)) for p in sorted(folder.iterdir()) if p.is_file()}


def file_bytes(folder: Path, stem: str) -> bytes:
    """The database and whatever WAL / shared-memory / journal files SQLite has next to it."""
    return b"".join(p.read_bytes() for p in sorted(folder.glob(f"{stem}*")) if p.is_file())


# -- MQTT over TLS with a password ---------------------------------------------------------------------------
def test_tls_client_certificate_and_password_from_systemd_credentials(tmp_path: Path, setup: Setup) -> None:
    """The password reaches the agent as $CREDENTIALS_DIRECTORY/mqtt_password and is seen nowhere else."""
    password = "pw-" + secrets.token_hex(16)
    users = {AGENT_USER: password, "watcher": "watcher-" + secrets.token_hex(8)}
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    (credentials / "mqtt_password").write_text(password + "\n")  # `echo > file` style: the newline is not in it
    (credentials / "mqtt_password").chmod(0o400)
    enroll_sets, visits = plan(setup.faces / "people")
    first = next(iter(enroll_sets))
    cli("enroll", first, *map(str, enroll_sets[first]), *models(setup, tmp_path / "gallery.sqlite"))
    video = tmp_path / "door.avi"
    write_video(visits[:2], video)
    with (
        MosquittoBroker(tmp_path / "b", users=users, tls=setup.tls, require_client_cert=True) as broker,
        Subscriber(broker, ["#"], username="watcher", password=users["watcher"]) as sub,
    ):
        tls = setup.tls
        config = base_config(
            tmp_path,
            detector=setup.detector,
            embedder=setup.embedder,
            source=str(video),
            gallery=tmp_path / "gallery.sqlite",
            port=broker.port,
            device_id=DEVICE,
            mqtt={
                "tls": {
                    "ca_file": str(tls.ca_cert),
                    "cert_file": str(tls.client_cert),
                    "key_file": str(tls.client_key),
                },
                "username": AGENT_USER,
                "password_file": "$CREDENTIALS_DIRECTORY/mqtt_password",
            },
        )
        env = {**os.environ, "CREDENTIALS_DIRECTORY": str(credentials)}
        with AgentProcess(
            write_config(tmp_path / "agent.toml", config), args=["--log-level", "DEBUG"], env=env
        ) as agent:
            environ = Path(f"/proc/{agent.pid}/environ").read_bytes()
            cmdline = Path(f"/proc/{agent.pid}/cmdline").read_bytes()
            assert agent.wait(180) == 0, agent.stderr[-3000:]
        wait_until(lambda: any(m.payload == b"offline" for m in sub.messages), what="offline")
        messages = sub.messages
        broker_log = broker.log_file.read_text(errors="replace")
    events = unique_events(events_of(messages, DEVICE))
    assert len(events) == 2 * len(visits[:2])  # delivered over TLS, authenticated
    assert any(m.topic == f"facelite/{DEVICE}/state" for m in messages)
    assert f"u'{AGENT_USER}'" in broker_log  # the agent logged in as its user, with its certificate
    secret = password.encode()
    assert secret not in environ and secret not in cmdline
    assert password not in agent.stderr and password not in "\n".join(agent._out)
    assert not [m.topic for m in messages if secret in m.payload or secret in m.topic.encode()]
    assert secret not in file_bytes(tmp_path, "spool.sqlite")
    assert secret not in (tmp_path / "agent.toml").read_bytes()


def test_tls_with_ca_only_and_password_from_the_environment(tmp_path: Path, setup: Setup) -> None:
    password = "env-" + secrets.token_hex(16)
    users = {AGENT_USER: password, "watcher": "w-" + secrets.token_hex(8)}
    with (
        MosquittoBroker(tmp_path / "b", users=users, tls=setup.tls) as broker,
        Subscriber(broker, ["#"], username="watcher", password=users["watcher"]) as sub,
    ):
        config = base_config(
            tmp_path,
            detector=setup.detector,
            embedder=setup.embedder,
            source="/dev/video-facelite-missing",
            gallery=tmp_path / "gallery.sqlite",
            port=broker.port,
            device_id=DEVICE,
            mqtt={"tls": {"ca_file": str(setup.tls.ca_cert)}, "username": AGENT_USER, "password_env": "MQTT_PW"},
        )
        env = {**os.environ, "MQTT_PW": password}
        with AgentProcess(write_config(tmp_path / "agent.toml", config), args=["--log-level", "DEBUG"], env=env) as a:
            wait_until(lambda: any(m.topic.endswith("/state") for m in sub.messages), 60, "a state message")
            assert a.terminate() == 0, a.stderr[-3000:]
        wait_until(lambda: any(m.payload == b"offline" for m in sub.messages), what="offline")
        messages = sub.messages
    assert [m.payload for m in messages if m.topic == f"facelite/{DEVICE}/availability"] == [b"online", b"offline"]
    assert password not in a.stderr
    assert not [m.topic for m in messages if password.encode() in m.payload]


def refused(tmp_path: Path, setup: Setup, broker: MosquittoBroker, mqtt: dict[str, object], env: dict[str, str]) -> str:
    """Run the idle agent against a broker that refuses it; returns its stderr after SIGTERM."""
    config = base_config(
        tmp_path,
        detector=setup.detector,
        embedder=setup.embedder,
        source="/dev/video-facelite-missing",
        gallery=tmp_path / "gallery.sqlite",
        port=broker.port,
        device_id=DEVICE,
        mqtt={"reconnect": {"initial_s": 0.5, "max_s": 1.0}, **mqtt},
    )
    with AgentProcess(write_config(tmp_path / "agent.toml", config), args=["--log-level", "DEBUG"], env=env) as agent:
        agent.wait_line(r"attempt [3-9]", timeout=60)  # it keeps trying, quietly
        assert agent.alive()
        assert agent.terminate() == 0, agent.stderr[-3000:]
    return agent.stderr


def test_refused_login_or_untrusted_broker_is_one_warning_and_never_the_password(tmp_path: Path, setup: Setup) -> None:
    password = "wrong-" + secrets.token_hex(16)
    env = {**os.environ, "MQTT_PW": password}
    users = {AGENT_USER: "the-right-one-" + secrets.token_hex(8)}
    with MosquittoBroker(tmp_path / "b", users=users, tls=setup.tls) as broker:
        cases = {
            "wrong password": ({"tls": {"ca_file": str(setup.tls.ca_cert)}}, "not authori"),
            "untrusted broker": ({"tls": {"ca_file": str(setup.rogue.ca_cert)}}, "certificate verify failed"),
        }
        for name, (tls, says) in cases.items():
            folder = tmp_path / name.replace(" ", "_")
            folder.mkdir()
            stderr = refused(folder, setup, broker, {**tls, "username": AGENT_USER, "password_env": "MQTT_PW"}, env)
            warnings = [
                line for line in stderr.splitlines() if line.startswith(("WARNING facelite.service.sinks", "ERROR"))
            ]
            assert len(warnings) == 1, (name, warnings)  # one line per outage, the retries are debug
            assert says in warnings[0].lower(), (name, warnings)
            assert password not in stderr and "Traceback" not in stderr, name


def test_missing_credential_is_one_line_naming_the_setting(tmp_path: Path, setup: Setup) -> None:
    config = base_config(
        tmp_path,
        detector=setup.detector,
        embedder=setup.embedder,
        source="/dev/video-facelite-missing",
        gallery=tmp_path / "gallery.sqlite",
        port=1,
        mqtt={"username": AGENT_USER, "password_file": "$CREDENTIALS_DIRECTORY/mqtt_password"},
    )
    path = write_config(tmp_path / "agent.toml", config)
    for env, says in (
        ({}, "variable 'CREDENTIALS_DIRECTORY' is not set (mqtt.password_file)"),
        ({"CREDENTIALS_DIRECTORY": str(tmp_path / "nowhere")}, "password file cannot be read: No such file"),
    ):
        environ = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"} | env
        proc = subprocess.run(
            [sys.executable, "-m", "facelite", "--config", str(path)],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=environ,
            timeout=60,
        )
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        (line,) = [line for line in proc.stderr.splitlines() if not line.startswith("INFO ")]
        assert line.startswith("error: ") and says in line, line


# -- private files -------------------------------------------------------------------------------------------
@pytest.fixture
def two_people(tmp_path: Path, setup: Setup) -> dict[str, list[Path]]:
    """Two people with photos under distinctive file names (the gallery keeps each template's source name)."""
    people = {"Zelda Forgetme": "deepface_id02", "Bob Keepme": "deepface_id03"}
    out: dict[str, list[Path]] = {}
    for name, folder in people.items():
        photos = sorted((setup.faces / "people" / folder).glob("*.jpg"))[:2]
        target = tmp_path / "photos" / slugify(name)
        target.mkdir(parents=True)
        out[name] = []
        for i, photo in enumerate(photos):
            copy = target / f"{slugify(name)}-private-{i}.jpg"
            shutil.copy(photo, copy)
            out[name].append(copy)
    return out


def stored_vectors(setup: Setup, photos: Iterable[Path]) -> list[bytes]:
    """The float32 bytes `facelite enroll` stores for these photos (same detector, embedder and normalisation)."""
    detector = create_detector(setup.detector)
    embedder = Embedder.from_model_dir(setup.embedder)
    dim = int(embedder.manifest.embedding_size or 0)
    out = []
    for photo in photos:
        image = read_image(photo)
        face = max(detector.detect(image), key=lambda f: f.bbox.area)
        vector = check_vector(embedder.embed(image, face).vector, dim, str(photo))
        out.append(vector.astype("<f4").tobytes())
    return out


def traces(data: bytes, vector: bytes, window: int = 16) -> int:
    """How many aligned ``window``-byte pieces of ``vector`` occur in ``data``, leaving out pieces that hold a float
    0.0: an int8 embedder's output has exact zeros (every element at its zero point), and runs of zero bytes are in
    any SQLite file's free space, so such a piece says nothing about the vector."""
    zero = bytes(4)
    pieces = [vector[i : i + window] for i in range(0, len(vector) - window + 1, 4)]
    return sum(p in data for p in pieces if all(p[j : j + 4] != zero for j in range(0, window, 4)))


def enroll_all(setup: Setup, people: dict[str, list[Path]], gallery: Path, *extra: str, umask: int = 0o022) -> None:
    for name, photos in people.items():
        proc = cli("enroll", name, *map(str, photos), *models(setup, gallery), *extra, umask=umask)
        assert proc.returncode == 0, proc.stderr
        assert f"enrolled {name}: {len(photos)} template(s)" in proc.stdout


def test_gallery_spool_and_their_wal_files_are_0600_even_with_umask_000(
    tmp_path: Path, setup: Setup, two_people: dict[str, list[Path]]
) -> None:
    var = tmp_path / "var"
    var.mkdir()
    enroll_all(setup, two_people, var / "gallery.sqlite", umask=0)
    assert private_files(var) == {"gallery.sqlite": "0o600"}
    with MosquittoBroker(tmp_path / "b") as broker:
        config = base_config(
            var,
            detector=setup.detector,
            embedder=setup.embedder,
            source="/dev/video-facelite-missing",
            gallery=var / "gallery.sqlite",
            port=broker.port,
        )
        umask0 = {"wrapper": ["sh", "-c", 'umask 000 && exec "$@"', "sh"]}
        with AgentProcess(write_config(tmp_path / "agent.toml", config), **umask0) as agent:  # type: ignore[arg-type]
            agent.wait_line(r"agent fault running", timeout=60)
            wait_until(lambda: (var / "gallery.sqlite-wal").exists(), 10, "the gallery WAL")
            open_files = private_files(var)
            assert agent.terminate() == 0, agent.stderr[-3000:]
    # presence.json names people too (what was published about whom, for restarts and forgetting).
    assert {"gallery.sqlite", "gallery.sqlite-wal", "gallery.sqlite-shm", "spool.sqlite", "presence.json"} <= set(
        open_files
    )
    assert set(open_files.values()) == {"0o600"}, open_files


def test_encrypted_gallery_file_holds_no_plaintext_vector_bytes(
    tmp_path: Path, setup: Setup, two_people: dict[str, list[Path]]
) -> None:
    key = tmp_path / "gallery.key"
    key.write_text(secrets.token_hex(32) + "\n")
    key.chmod(0o600)
    plain, sealed = tmp_path / "plain", tmp_path / "sealed"
    plain.mkdir()
    sealed.mkdir()
    enroll_all(setup, two_people, plain / "gallery.sqlite")
    enroll_all(setup, two_people, sealed / "gallery.sqlite", "--key-file", str(key))
    vectors = stored_vectors(setup, [p for photos in two_people.values() for p in photos])
    plain_bytes, sealed_bytes = file_bytes(plain, "gallery.sqlite"), file_bytes(sealed, "gallery.sqlite")
    # The search works: the plaintext gallery holds every vector byte for byte ...
    assert all(v in plain_bytes for v in vectors)
    assert all(traces(plain_bytes, v) > 20 for v in vectors), [traces(plain_bytes, v) for v in vectors]
    # ... and the encrypted one not even 16 bytes (4 floats) of any of them.
    assert [traces(sealed_bytes, v) for v in vectors] == [0] * len(vectors)
    listed = cli("gallery", "list", *models(setup, sealed / "gallery.sqlite"), "--key-file", str(key))
    assert listed.returncode == 0 and "2 people" in listed.stdout, listed.stderr
    no_key = cli("gallery", "list", *models(setup, sealed / "gallery.sqlite"))
    assert no_key.returncode == 2 and "encrypted but no key" in no_key.stderr


def test_forget_removes_name_sources_and_vectors_from_the_file_bytes_while_the_agent_runs(
    tmp_path: Path, setup: Setup, two_people: dict[str, list[Path]]
) -> None:
    var = tmp_path / "var"
    var.mkdir()
    gallery = var / "gallery.sqlite"
    enroll_all(setup, two_people, gallery)
    zelda, bob = "Zelda Forgetme", "Bob Keepme"
    zelda_vectors = stored_vectors(setup, two_people[zelda])
    bob_vectors = stored_vectors(setup, two_people[bob])
    zelda_marks = [zelda.encode(), slugify(zelda).encode()]  # name; topic slug, which also starts her photo names
    before = file_bytes(var, "gallery.sqlite")
    assert all(m in before for m in zelda_marks) and all(v in before for v in zelda_vectors)

    config = base_config(
        tmp_path,
        detector=setup.detector,
        embedder=setup.embedder,
        source="/dev/video-facelite-missing",
        gallery=gallery,
        port=None,
    )
    with AgentProcess(write_config(tmp_path / "agent.toml", config)) as agent:  # holds the gallery open
        agent.wait_line(r"2 people enrolled", timeout=60)
        forgot = cli("gallery", "forget", zelda, *models(setup, gallery))
        assert forgot.returncode == 0, forgot.stderr
        assert forgot.stdout.startswith(f"forgot {zelda}")
        if forgot.stdout.strip() == f"forgot {zelda}":  # complete at once: nothing left even while the agent runs
            now = file_bytes(var, "gallery.sqlite")
            assert not any(m in now for m in zelda_marks)
        agent.wait_line(r"gallery changed \(version \d+\): 1 people", timeout=30)
        assert agent.terminate() == 0, agent.stderr[-3000:]
    after = file_bytes(var, "gallery.sqlite")
    assert [m for m in zelda_marks if m in after] == []
    assert [traces(after, v) for v in zelda_vectors] == [0] * len(zelda_vectors)
    assert bob.encode() in after and all(v in after for v in bob_vectors)  # the other person is intact
    listed = cli("gallery", "list", *models(setup, gallery))
    assert bob in listed.stdout and zelda not in listed.stdout and "1 people" in listed.stdout


def test_export_is_0600_even_with_umask_000_and_over_a_readable_file(
    tmp_path: Path, setup: Setup, two_people: dict[str, list[Path]]
) -> None:
    gallery = tmp_path / "gallery.sqlite"
    enroll_all(setup, two_people, gallery)
    fresh, existing = tmp_path / "fresh.json", tmp_path / "existing.json"
    existing.write_text("old")
    existing.chmod(0o644)
    for target in (fresh, existing):
        proc = cli("gallery", "export", str(target), *models(setup, gallery), umask=0)
        assert proc.returncode == 0, proc.stderr
        assert mode(target) == 0o600, (target, oct(mode(target)))
        assert b"Zelda Forgetme" in target.read_bytes()
    assert not list(tmp_path.glob("*.tmp"))
