"""`make demo`'s verdict: which visits are wrong, and the exit status that says so (no models needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from facelite.tools.demo import VERDICT_RULE, WRONG_VISIT, Visit, summarize

ADA = Visit(Path("people/ada/3.jpg"), "ada", True)
BOB = Visit(Path("people/bob/2.jpg"), "bob", True)
EVE = Visit(Path("people/eve/1.jpg"), "eve", False)  # a stranger: never enrolled


def decision(track: int, person: str | None) -> dict[str, object]:
    kind = "recognized" if person else "unknown"
    return {"type": kind, "track_id": track, "person": person, "similarity": 0.5}


def left(track: int) -> dict[str, object]:
    return {"type": "left", "track_id": track, "person": None, "similarity": None}


def run(events: list[dict[str, object]], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = summarize([ADA, BOB, EVE], events, frames=150, elapsed=3.0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_right_visits_and_a_missed_known_person_pass_and_the_rule_is_printed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run([decision(1, "ada"), left(1), decision(2, None), left(2), decision(3, None)], capsys)
    assert code == 0, out + err
    assert "correct 2/3, wrong 0, known person missed 1" in out
    assert f"rule: {VERDICT_RULE}" in out and "PASS" in out and not err


def test_a_known_person_announced_as_someone_else_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run([decision(1, "ada"), decision(2, "ada"), decision(3, None)], capsys)
    assert code == WRONG_VISIT == 1
    assert "WRONG bob/2.jpg" in out and "1 visit(s) announced as the wrong person: bob/2.jpg as ada" in err


def test_a_stranger_announced_as_someone_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run([decision(1, "ada"), decision(2, "bob"), decision(3, "bob")], capsys)
    assert code == WRONG_VISIT
    assert "WRONG eve/1.jpg" in out and "eve/1.jpg as bob" in err


def test_visits_that_do_not_pair_one_to_one_with_decisions_fail(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run([decision(1, "ada"), decision(2, "bob")], capsys)  # the stranger's visit gave no event
    assert code == WRONG_VISIT and "2 decisions for 3 visits" in err
    code, _, err = run([decision(1, "ada"), decision(2, "bob"), decision(3, None), decision(4, None)], capsys)
    assert code == WRONG_VISIT and "4 decisions for 3 visits" in err
