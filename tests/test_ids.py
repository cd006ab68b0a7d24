"""Task ids (amqptasks/message/ids.py): uuid4-shaped, unique, also across a fork (the random bits are drawn in
advance, and a forked child must not hand out its parent's)."""

from __future__ import annotations

import os
import uuid

from amqptasks.message.ids import new_id


def test_ids_are_version_4_uuids_and_do_not_repeat() -> None:
    ids = [new_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert {uuid.UUID(i).version for i in ids} == {4}
    assert all(str(uuid.UUID(i)) == i for i in ids)


def test_a_forked_child_never_hands_out_an_id_its_parent_does() -> None:
    # Given a parent that has drawn random bits for ids ahead (one id taken, the rest waiting)
    new_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: writes its next 100 ids and leaves
        try:
            os.write(write, "\n".join(new_id() for _ in range(100)).encode())
        finally:
            os._exit(0)
    os.close(write)
    # When both take the next 100 ids
    parents = {new_id() for _ in range(100)}
    with os.fdopen(read) as pipe:
        childs = set(pipe.read().split("\n"))
    os.waitpid(pid, 0)
    # Then none is shared
    assert len(childs) == 100 and parents.isdisjoint(childs)
