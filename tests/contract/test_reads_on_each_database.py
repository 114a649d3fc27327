"""`Database.reading`: a read from one snapshot that waits for no writer, on each database."""

from __future__ import annotations

import threading

from stores.database import Database


def test_a_read_sees_one_snapshot_and_waits_for_no_open_transaction(database: Database) -> None:
    with database.transaction() as tx:
        tx.execute("INSERT INTO checkpoints (consumer, topic, partition, next_offset) VALUES ('c', 't', 0, 1)")
    opened, release, done = threading.Event(), threading.Event(), threading.Event()

    def write_and_hold() -> None:  # a writer that keeps its transaction open, uncommitted
        with database.transaction() as tx:
            tx.execute("UPDATE checkpoints SET next_offset = 2 WHERE consumer = 'c'")
            opened.set()
            release.wait(10)
        done.set()

    writer = threading.Thread(target=write_and_hold)
    writer.start()
    opened.wait()
    try:
        with database.reading() as tx:
            seen = tx.execute("SELECT next_offset FROM checkpoints WHERE consumer = 'c'")
        read_while_open = not done.is_set()
    finally:
        release.set()
        writer.join()
    assert read_while_open
    assert [int(row[0]) for row in seen] == [1]  # the committed row, not the open transaction's
    for _ in range(2):  # and after the commit, on a connection kept from the last read
        with database.reading() as tx:
            assert [int(row[0]) for row in tx.execute("SELECT next_offset FROM checkpoints WHERE consumer = 'c'")] == [2]
