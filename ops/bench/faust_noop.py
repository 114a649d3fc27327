"""`python -m ops.bench.faust_noop TOPIC COUNT BATCH`: Faust's delivery alone, folding nothing.

The same consumer and delivery settings (streams.faust_consumer), runs (streams.faust_runs) and
event loop as streams.faust_app, with an agent that only counts the records of each run: replay's
measure of what Faust itself costs per event. Prints `RESULT <events> <seconds>` on stdout.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from typing import Any

import faust

from ops.bench.common import KAFKA
from streams.faust_consumer import BatchConsumer, delivery_settings, new_event_loop, transport_with
from streams.faust_runs import RunSchema


def main(topic: str, count: int, batch: int) -> None:
    datadir = tempfile.mkdtemp(prefix="omni-bench-noop-")
    app = faust.App(
        f"bench-noop-{os.getpid()}",
        broker=f"kafka://{KAFKA}",
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,
        topic_disable_leader=True,
        store="memory://",
        datadir=datadir,
        autodiscover=False,
        **delivery_settings(batch),
    )
    app.transport = transport_with(BatchConsumer)(app.conf.broker_consumer, app)
    source = app.topic(topic, schema=RunSchema())
    seen, first = 0, 0.0

    @app.agent(source)
    async def count_only(stream: Any) -> None:
        nonlocal seen, first
        async for event in stream.events():  # one per partition's fetched run (streams.faust_runs)
            first = first or time.monotonic()  # from the first delivery: start-up and rebalance left out
            seen += len(event.value)
            if seen >= count:
                print(f"RESULT {seen} {time.monotonic() - first}", flush=True)
                shutil.rmtree(datadir, ignore_errors=True)
                os._exit(0)  # Faust's graceful stop takes seconds and measures nothing

    faust.Worker(app, loglevel="WARNING", override_logging=False, loop=new_event_loop()).execute_from_commandline()


if __name__ == "__main__":
    topic, count, batch = sys.argv[1:4]
    sys.argv = sys.argv[:1] + ["worker"]
    main(topic, int(count), int(batch))
