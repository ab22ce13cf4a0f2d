"""Prometheus metrics for operators, served at GET /metrics in the text format: request counts and
latencies by route (an ASGI middleware), and, read from the database at each scrape, jobs by
status, the queue's depth, live workers and how long finished jobs took."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import func, select

from app.db import queries, units
from app.db.models import Job
from contract.status import JobStatus

STAGE_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 3 * 3600, 12 * 3600)
DURATION_BUCKETS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600)


class RequestMetrics:
    """ASGI middleware: counts and times every HTTP request by method, route template and status."""

    def __init__(self, app, registry: CollectorRegistry):
        self.app = app
        self.requests = Counter(
            "htl_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=registry
        )
        self.latency = Histogram(
            "htl_http_request_duration_seconds",
            "time to answer an HTTP request",
            ["method", "route"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}
        start = time.perf_counter()

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"  # the template, never a raw path
            self.requests.labels(scope["method"], route, str(status["code"])).inc()
            self.latency.labels(scope["method"], route).observe(time.perf_counter() - start)


class JobCollector:
    """Read at each scrape: jobs by status, queue depth, live workers, durations of succeeded jobs and
    of their stages."""

    def __init__(self, sessionmaker, settings):
        self.sessionmaker = sessionmaker
        self.settings = settings

    def describe(self):
        return []

    def collect(self):
        with self.sessionmaker() as session:
            counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            live = len(queries.live_workers(session=session, since=self.settings.live_workers_since))
            durations = [
                (finished - started).total_seconds()
                for started, finished in session.execute(
                    select(Job.started_at, Job.finished_at).where(
                        Job.status == JobStatus.SUCCEEDED, Job.started_at.is_not(None), Job.finished_at.is_not(None)
                    )
                )
            ]
            stages = units.unit_durations(session=session)
        jobs = GaugeMetricFamily("htl_jobs", "jobs by status", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs
        yield GaugeMetricFamily("htl_queue_depth", "jobs waiting for a worker", value=counts.get(JobStatus.QUEUED, 0))
        yield GaugeMetricFamily("htl_live_workers", "workers that stamped themselves alive lately", value=live)
        yield HistogramMetricFamily(
            "htl_job_duration_seconds",
            "start to end of succeeded jobs",
            buckets=_buckets(durations, DURATION_BUCKETS),
            sum_value=sum(durations),
        )
        by_stage = HistogramMetricFamily(
            "htl_stage_duration_seconds",
            "time each unit of a succeeded job took, by its stage "
            "(dense, score, attend, control, evaluate; a unit per seed where there is one)",
            labels=["stage"],
        )
        for stage in sorted({name for name, _ in stages}):
            seconds = [d for name, d in stages if name == stage]
            by_stage.add_metric([stage], _buckets(seconds, STAGE_BUCKETS), sum(seconds))
        yield by_stage


def _buckets(values: list[float], bounds: tuple) -> list[tuple[str, int]]:
    """Cumulative counts per upper bound, as Prometheus histograms want them."""
    return [(str(bound), sum(1 for v in values if v <= bound)) for bound in bounds] + [("+Inf", len(values))]
