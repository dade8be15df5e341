"""The disk spool: FIFO, bounded (oldest dropped and counted), crash-safe, and quiet about a full disk."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from facelite.errors import FaceliteError
from facelite.service.messages import Message
from facelite.service.spool import Spool, message_size

REPO = Path(__file__).resolve().parents[1]


def event(i: int, size: int = 0) -> Message:
    payload = json.dumps({"seq": i, "pad": "x" * size}).encode()
    return Message(topic="facelite/dev/events", payload=payload, qos=1, durable=True)


def seqs(spool: Spool) -> list[int]:
    return [json.loads(item.message.payload)["seq"] for item in spool.peek(10_000)]


def run_child(code: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_fifo_put_peek_ack(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.sqlite", max_messages=100, max_bytes=1 << 20) as spool:
        ids = [spool.put(event(i)) for i in range(10)]
        assert all(isinstance(i, int) for i in ids)
        assert ids == sorted(ids)
        assert spool.pending == 10
        first = spool.peek(3)
        assert [json.loads(m.message.payload)["seq"] for m in first] == [0, 1, 2]
        assert all(m.message.durable and m.message.topic == "facelite/dev/events" for m in first)
        # peek after an id continues where a sender left off
        assert [m.id for m in spool.peek(2, after=first[-1].id)] == ids[3:5]
        spool.ack([m.id for m in first])
        spool.ack([ids[0], 999_999])  # already acked / unknown: ignored
        assert spool.pending == 7
        assert seqs(spool) == list(range(3, 10))
        assert spool.stats().pending_bytes == sum(message_size(event(i)) for i in range(3, 10))


def test_purge_erases_matching_messages_from_the_file_bytes(tmp_path: Path) -> None:
    """Forgetting a person erases their spooled events (and face crops) from the spool file and its WAL."""
    path = tmp_path / "s.sqlite"
    crop = "ADA-FACE-CROP-" * 40  # stands in for a base64 face crop that must not survive on disk

    def visit(i: int, person: str) -> Message:
        body = {"seq": i, "person": person, "face_jpeg": crop if person == "Ada" else "other"}
        return Message("facelite/dev/events", json.dumps(body).encode(), qos=1, durable=True)

    with Spool(path, max_messages=100, max_bytes=1 << 20) as spool:
        delivered = spool.put(visit(-1, "Ada"))
        assert delivered is not None
        spool.ack([delivered])  # already sent: no longer pending, but its bytes were once in the file
        for i, person in enumerate(["Ada", "Bob", "Ada", "Cy"]):
            spool.put(visit(i, person))
        erased = spool.purge(lambda m: json.loads(m.payload)["person"] == "Ada")
        assert erased == 2
        assert seqs(spool) == [1, 3] and spool.pending == 2
        assert spool.stats().pending_bytes == message_size(visit(1, "Bob")) + message_size(visit(3, "Cy"))
        assert spool.purge(lambda m: json.loads(m.payload)["person"] == "Ada") == 0
        on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("s.sqlite"))
        assert b"ADA-FACE-CROP" not in on_disk and b'"Ada"' not in on_disk
    with Spool(path, max_messages=100, max_bytes=1 << 20) as again:
        assert seqs(again) == [1, 3]


def test_overflow_by_count_drops_oldest_and_counts_across_reopen(tmp_path: Path) -> None:
    errors: list[str] = []
    path = tmp_path / "s.sqlite"
    with Spool(path, max_messages=5, max_bytes=1 << 20, on_error=errors.append) as spool:
        for i in range(12):
            spool.put(event(i))
        assert seqs(spool) == [7, 8, 9, 10, 11]
        assert spool.stats().dropped_overflow == 7
        assert spool.dropped == 7
        assert len(errors) == 1 and "full" in errors[0]  # reported once per episode, not once per message
    with Spool(path, max_messages=5, max_bytes=1 << 20) as spool:
        assert seqs(spool) == [7, 8, 9, 10, 11]
        assert spool.stats().dropped_overflow == 7


def test_overflow_by_bytes_drops_oldest(tmp_path: Path) -> None:
    one = message_size(event(0, size=1000))
    with Spool(tmp_path / "s.sqlite", max_messages=1000, max_bytes=3 * one + 10) as spool:
        for i in range(6):
            spool.put(event(i, size=1000))
        assert seqs(spool) == [3, 4, 5]
        assert spool.stats().pending_bytes <= 3 * one + 10
        assert spool.stats().dropped_overflow == 3
        # a message larger than the whole spool is dropped alone, the backlog stays
        assert spool.put(event(99, size=10 * one)) is None
        assert seqs(spool) == [3, 4, 5]
        assert spool.stats().dropped_overflow == 4


def test_sigkill_then_reopen_yields_unacked_in_order(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    child = run_child(
        """
        import json, sys, time
        from facelite.service.messages import Message
        from facelite.service.spool import Spool
        spool = Spool(sys.argv[1], max_messages=1000, max_bytes=1 << 20)
        ids = [spool.put(Message("t/e", json.dumps({"seq": i}).encode(), durable=True)) for i in range(40)]
        spool.ack(ids[:15])
        print("ready", flush=True)
        time.sleep(60)
        """,
        str(path),
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready", child.stderr.read() if child.stderr else ""
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()
    with Spool(path, max_messages=1000, max_bytes=1 << 20) as spool:
        assert spool.pending == 25
        assert seqs(spool) == list(range(15, 40))


def test_second_process_cannot_open_a_spool_in_use(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with Spool(path, 10, 1 << 20), pytest.raises(FaceliteError, match="in use by another process"):
        Spool(path, 10, 1 << 20)


def test_corrupt_spool_is_moved_aside_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"this is not an sqlite database" * 100)
    errors: list[str] = []
    with Spool(path, 10, 1 << 20, on_error=errors.append) as spool:
        assert spool.pending == 0
        assert spool.put(event(1)) is not None
    assert len(errors) == 1 and "moved to" in errors[0]
    assert len(list(tmp_path.glob("s.sqlite.corrupt-*"))) == 1


def _namespace_prefix() -> list[str]:
    # A private mount namespace keeps the tiny tmpfs invisible to the host and gone with the child.
    unshare = shutil.which("unshare")
    assert unshare, "util-linux `unshare` is needed for the disk-full test"
    if os.geteuid() == 0:
        return [unshare, "--mount", "--propagation", "private"]
    return [unshare, "--user", "--map-root-user", "--mount", "--propagation", "private"]


def test_disk_full_drops_counts_reports_once_and_recovers(tmp_path: Path) -> None:
    """A real ENOSPC: the spool lives on a 256 KiB tmpfs that the test fills up."""
    mount = tmp_path / "small"
    mount.mkdir()
    child_code = textwrap.dedent(
        """
        import json, os, sys
        from facelite.service.messages import Message
        from facelite.service.spool import Spool
        folder = sys.argv[1]
        with open(os.path.join(folder, "ballast"), "wb") as fh:
            fh.write(b"\\0" * 96 * 1024)
        errors = []
        spool = Spool(os.path.join(folder, "s.sqlite"), max_messages=100000, max_bytes=1 << 30,
                      on_error=errors.append)
        results = []
        for i in range(600):
            try:
                results.append(spool.put(Message("t/e", json.dumps({"seq": i, "pad": "x" * 1000}).encode(),
                                                 durable=True)))
            except BaseException as exc:  # the contract: never raises
                print(json.dumps({"raised": repr(exc)})); sys.exit(1)
        full = spool.stats()
        os.remove(os.path.join(folder, "ballast"))
        spool.ack([item.id for item in spool.peek(100000)])
        after = spool.put(Message("t/e", b'{"seq": 1000}', durable=True))
        spool.close()
        reopened = Spool(os.path.join(folder, "s.sqlite"), max_messages=100000, max_bytes=1 << 30)
        print(json.dumps({
            "accepted": sum(r is not None for r in results),
            "first_refused": next(i for i, r in enumerate(results) if r is None),
            "disk_full": full.dropped_disk_full,
            "errors": errors,
            "after": after,
            "reopened_disk_full": reopened.stats().dropped_disk_full,
            "reopened_seqs": [json.loads(m.message.payload)["seq"] for m in reopened.peek(10)],
        }))
        """
    )
    script = (
        f"mount -t tmpfs -o size=256k tmpfs {mount} && "
        f'PYTHONPATH={REPO} {sys.executable} -c "$0" {mount}'  # the code is passed as $0 to avoid quoting
    )
    proc = subprocess.run(
        [*_namespace_prefix(), "sh", "-c", script, child_code], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["accepted"] > 0
    assert result["disk_full"] == 600 - result["accepted"] > 0
    assert len(result["errors"]) == 1 and "disk is full" in result["errors"][0]
    assert result["after"] is not None  # space freed: writing works again
    assert result["reopened_disk_full"] == result["disk_full"]  # the count was saved with the next write
    assert result["reopened_seqs"] == [1000]
