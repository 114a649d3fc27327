"""What `omni worker` and `omni relay` show an operator, as processes on the shared services: their
/metrics pass promtool's lint and carry none of the API's own series (a worker or a relay
authenticates no one and serves no request: `omni_key_cache_trusted` at 0 there made the API
dashboard's `min(omni_key_cache_trusted)` say the key cache was bypassed in every Kafka-mode
deployment), and every line either writes is one JSON log record (Faust's start-up spinner wrote
terminal escapes and `OK ^` between them)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from schemas.topics import Topics
from tests.e2e.conftest import ADMIN
from tests.integration.conftest import drop_schema, free_port, new_schema_name
from tests.integration.worker import RELAY, WorkerProcess, wait_ready, worker_env
from tests.promtool import check_metrics

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.redis]

API_ONLY = ("omni_key_cache_trusted", "omni_http_requests_total", "omni_http_request_seconds")


def not_json(log: str) -> list[str]:
    lines = []
    for line in log.splitlines():
        try:
            if not isinstance(json.loads(line), dict):
                lines.append(line)
        except ValueError:
            lines.append(line)
    return lines


async def test_worker_and_relay_export_their_own_series_and_log_json_only(
    tmp_path: Path, topics: Topics, kafka_servers: str, database_url: str, redis_url: str
) -> None:
    schema = new_schema_name()
    env = worker_env(topics, kafka_servers, database_url, schema, tmp_path / "data")
    worker = WorkerProcess({**env, "OMNI_WORKER_METRICS_PORT": str(free_port())}, tmp_path)
    relay_env = {**env, "OMNI_RELAY_METRICS_PORT": str(free_port()), "OMNI_ADMIN_KEY": ADMIN, "REDIS_URL": redis_url}
    relay = WorkerProcess(relay_env, tmp_path, args=RELAY, name="relay", port_setting="OMNI_RELAY_METRICS_PORT")
    processes = [worker, relay]
    try:
        for process in processes:
            process.start()
        await wait_ready(processes, 90)
        for process in processes:
            samples = process.metrics()
            assert samples[f'omni_ready{{process="{process.name}"}}'] == 1
            api_series = sorted(s for s in samples if s.split("{")[0].startswith(API_ONLY))
            assert api_series == [], f"{process.name} exports the API's series"
            with urllib.request.urlopen(process.url("/metrics"), timeout=5) as response:
                check_metrics(response.read().decode())
        for process in processes:
            assert process.stop() == 0, process.report()
            assert not_json(process.log_text()) == [], f"{process.name} wrote lines that are not JSON log records"
    finally:
        for process in processes:
            process.ensure_dead()
        drop_schema(database_url, schema)
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_servers)
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            await admin.delete_topics([t for t in topics.all() if t in existing])
        finally:
            await admin.close()
