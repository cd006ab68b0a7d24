"""The crash journal (amqptasks/worker/journal.py) as the next worker reads it: a real process writes it and dies
by SIGKILL, without a chance to flush or close anything; no broker needed."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from amqptasks.worker.journal import JOURNAL_BYTES, Crashes, Journal, journal_paths, read_dead


def die_while_running(directory: Path, steps: list[tuple[str, str]]) -> int:
    """Fork a process that opens a journal, records *steps* ("S"/"F", task id) and is SIGKILLed; its pid."""
    pid = os.fork()
    if pid == 0:  # the child: no return from here
        try:
            journal = Journal("w1@host", directory)
            journal.ready()
            for kind, task in steps:
                (journal.started if kind == "S" else journal.finished)(task)
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    return pid


def test_a_killed_process_leaves_the_tasks_it_was_running(tmp_path: Path) -> None:
    # Given a worker process that started three tasks and finished one, then was killed
    pid = die_while_running(tmp_path, [("S", "a"), ("S", "b"), ("F", "a"), ("S", "c")])
    # When the next worker (or the supervisor) reads what it left
    [path] = journal_paths(pid, tmp_path)
    dead = read_dead(path)
    # Then the two tasks it was running are named, and it had begun consuming
    assert dead is not None
    assert (dead.running, dead.ready, dead.hostname, dead.pid) == ({"b", "c"}, True, "w1@host", pid)


def test_the_journal_is_rewritten_when_full_and_still_names_what_was_running(tmp_path: Path) -> None:
    # Given a process that ran far more tasks than its journal's map holds (so it was rewritten several times),
    # with one long task running from the start and one started last
    many = [(kind, f"task-{i:05d}-{'x' * 30}") for i in range(4 * JOURNAL_BYTES // 80) for kind in ("S", "F")]
    pid = die_while_running(tmp_path, [("S", "long"), *many, ("S", "last")])
    # When it is read after its death
    dead = read_dead(journal_paths(pid, tmp_path)[0])
    # Then exactly those two were running
    assert dead is not None and dead.running == {"long", "last"}


def test_a_charge_appended_after_the_death_is_read_with_the_rest(tmp_path: Path) -> None:
    # Given a dead process's journal, and another worker that charged one of its tasks (lines appended after
    # the part of the file the dead process never wrote)
    pid = die_while_running(tmp_path, [("S", "a"), ("S", "b")])
    crashes = Crashes(tmp_path)
    crashes.claimer = "someone-else.journal"
    found = crashes.claim("a")
    assert found is not None
    crashes.done("a", found[1])
    # When a worker later looks for the other task
    again = Crashes(tmp_path)
    # Then "a" is charged already (not charged twice) and "b" is still to be charged
    assert again.claim("a") is None
    assert again.claim("b") is not None
    assert read_dead(journal_paths(pid, tmp_path)[0]) is not None


def test_a_live_journal_is_not_read_as_dead(tmp_path: Path) -> None:
    journal = Journal("w2@host", tmp_path)
    try:
        journal.started("running-now")
        assert read_dead(journal.path) is None
        assert Crashes(tmp_path).running_in_a_live_process("running-now")
    finally:
        journal.close()
    assert not journal.path.exists()  # a clean exit leaves nothing to charge
