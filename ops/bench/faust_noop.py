"""`python -m ops.bench.faust_noop TOPIC COUNT BATCH WITHIN`: Faust's delivery alone, folding nothing.

The same app settings, consumer (streams.faust_consumer), event loop and `take_events` loop as
streams.faust_app, with an agent that only counts: replay's measure of what Faust itself costs
per event. Prints `RESULT <events> <seconds>` on stdout.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any

import faust

from ops.bench.common import KAFKA
from streams.faust_consumer import BatchConsumer, QuietMonitor, new_event_loop, transport_with


def main(topic: str, count: int, batch: int, within: float) -> None:
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
        datadir=tempfile.mkdtemp(prefix="omni-bench-noop-"),
        autodiscover=False,
        monitor=QuietMonitor(),
    )
    app.transport = transport_with(BatchConsumer)(app.conf.broker_consumer, app)
    source = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    seen, first = 0, 0.0

    @app.agent(source)
    async def count_only(stream: Any) -> None:
        nonlocal seen, first
        async for events in stream.take_events(batch, within=within):
            first = first or time.monotonic()  # from the first delivery: start-up and rebalance left out
            seen += len(events)
            if seen >= count:
                print(f"RESULT {seen} {time.monotonic() - first}", flush=True)
                os._exit(0)  # Faust's graceful stop takes seconds and measures nothing

    faust.Worker(app, loglevel="WARNING", override_logging=False, loop=new_event_loop()).execute_from_commandline()


if __name__ == "__main__":
    topic, count, batch, within = sys.argv[1:5]
    sys.argv = sys.argv[:1] + ["worker"]
    main(topic, int(count), int(batch), float(within))
