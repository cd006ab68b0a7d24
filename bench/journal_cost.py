"""What the crash journal (amqptasks/worker/journal.py) adds to every task: one ``started`` and one ``finished``
record (stores into its memory map), measured in a tight loop (µs per task), on the journal directory the worker
would use. A tight loop has no other thread: what the former ``write()`` calls cost the worker besides their own
time (a GIL release each, taken by a task thread) shows in ``bench/worker.py --profile`` instead.

    python bench/journal_cost.py [tasks]
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

from amqptasks.worker.journal import Journal, journal_dir


def per_task_us(directory: Path, tasks: int) -> float:
    journal = Journal("bench@localhost", directory)
    ids = [str(uuid.uuid4()) for _ in range(tasks)]
    try:
        start = time.perf_counter()
        for task_id in ids:
            journal.started(task_id)
            journal.finished(task_id)
        return (time.perf_counter() - start) / tasks * 1e6
    finally:
        journal.close()


def main() -> None:
    tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    places = {"default": journal_dir(), "tmp": Path(tempfile.gettempdir()) / "amqptasks-journal-bench"}
    print(f"{'directory':<10} {'path':<40} {'run 1':>8} {'run 2':>8} {'run 3':>8}  (µs per task, {tasks:,} tasks)")
    for name, path in places.items():
        runs = [per_task_us(path, tasks) for _ in range(3)]
        print(f"{name:<10} {path!s:<40} " + " ".join(f"{r:>8.2f}" for r in runs))


if __name__ == "__main__":
    main()
