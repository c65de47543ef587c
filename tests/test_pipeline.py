"""Issue 5's machinery, checked for behaviour (speed itself is measured in bench/, not here)."""
from __future__ import annotations

import threading
import time

import pytest

from constants import ExitCode
from misp_source import prefetched
from ms_client import RateLimiter
from tests.support import expected_external_ids, held_external_ids, run_cli, write_config


def test_limiter_counts_requests_in_flight_against_the_window():
    limiter = RateLimiter(per_minute=2, window=0.3)
    active, most, lock = [0], [0], threading.Lock()

    def call() -> None:
        limiter.acquire()
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        limiter.release()

    started = time.monotonic()
    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 2
    assert time.monotonic() - started >= 2 * 0.3  # six calls, two per window: three windows


def test_prefetch_hands_pages_over_in_order_and_raises_errors_in_place():
    def pages():
        yield [1]
        yield [2]
        raise RuntimeError("page 3 failed")

    received = []
    with pytest.raises(RuntimeError, match="page 3"):
        for page in prefetched(pages()):  # a loop keeps the pages that came before the failure
            received.append(page)  # noqa: PERF402
    assert received == [[1], [2]]


def test_prefetch_stops_its_helper_when_the_consumer_stops():
    produced = []

    def endless():
        number = 0
        while True:
            number += 1
            produced.append(number)
            yield [number]

    consumer = prefetched(endless())
    assert next(consumer) == [1]
    consumer.close()
    settled = len(produced)
    time.sleep(0.3)
    assert len(produced) == settled <= 3  # the current page, one waiting, one being fetched


def test_batches_go_in_parallel_up_to_the_configured_limit(standins, tmp_path, capsys):
    standins.graph.latency = 0.2
    run = run_cli(write_config(tmp_path, standins, max_concurrent_requests=2), capsys=capsys)
    assert run.code == ExitCode.OK
    assert standins.graph.max_in_flight == 2
    assert held_external_ids(standins) == expected_external_ids(standins.misp.events)


@pytest.mark.parametrize(("target", "setting"), [("graph", "graph_requests_per_minute"), ("sentinel", "max_requests_per_minute")])
def test_client_pace_provokes_no_429_from_a_service_with_the_same_limit(standins, tmp_path, capsys, monkeypatch, target, setting):
    monkeypatch.setattr("ms_client.WINDOW_SECONDS", 0.5)
    service = getattr(standins, target)
    service.per_minute, service.window_seconds = 2, 0.5
    run = run_cli(write_config(tmp_path, standins, target=target, **{setting: 2}), capsys=capsys)
    assert run.code == ExitCode.OK
    writes = [r for r in service.requests_seen if r.method == "POST" and not r.path.endswith("queryIndicators")]
    assert service.throttled == 0 and len(writes) == 3  # the first run's read-back is not paced
