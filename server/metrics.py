"""The product's Prometheus series, next to vLLM's ``vllm:*`` ones on ``/metrics``.

Counters, not ratios (vLLM ``docs/design/metrics.md``); the ``strategy`` label takes
values from the closed registry set only (plus ``invalid`` for requests whose ``decoding``
object was rejected before a strategy was known); histograms reuse vLLM's bucket edges so
heatmaps line up with ``vllm:e2e_request_latency_seconds`` and
``vllm:time_to_first_token_seconds``.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from decoding.observe import Event, ExtraTokens

# vLLM 0.32 v1/metrics/buckets.py: request-latency and TTFT bucket edges.
LATENCY_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
INVALID = "invalid"
PREFIX = "lucid:"


class Metrics:
    """All product series; one instance per server process."""

    def __init__(
        self,
        model_name: str,
        strategies: list[str],
        versions: dict[str, str],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.model_name = model_name
        self.strategies = set(strategies)
        kw = {"registry": registry}
        base = ["model_name", "strategy"]
        self.requests = Counter(
            PREFIX + "requests",
            "Finished requests by strategy and finish reason (stop, length, abort, error).",
            [*base, "finished_reason"],
            **kw,
        )
        self.errors = Counter(
            PREFIX + "request_errors",
            "Requests answered with an HTTP error, by strategy "
            "('invalid' when the decoding object was rejected), status and error type.",
            [*base, "status_code", "error_type"],
            **kw,
        )
        self.e2e = Histogram(
            PREFIX + "e2e_request_latency_seconds",
            "End-to-end engine latency by strategy (seconds).",
            base,
            buckets=LATENCY_BUCKETS,
            **kw,
        )
        self.ttft = Histogram(
            PREFIX + "time_to_first_token_seconds",
            "Time to the first generated token by strategy (seconds).",
            base,
            buckets=TTFT_BUCKETS,
            **kw,
        )
        self.gen_tokens = Histogram(
            PREFIX + "request_generation_tokens",
            "Generated tokens per request by strategy.",
            base,
            buckets=TOKEN_BUCKETS,
            **kw,
        )
        self.extra_tokens = Counter(
            PREFIX + "extra_forward_tokens",
            "Tokens run through the model beyond the request's own sequence, by strategy "
            f"and kind ({', '.join(ExtraTokens)}).",
            [*base, "kind"],
            **kw,
        )
        self.rollbacks = Counter(
            PREFIX + "rollbacks", "Retrospection rollbacks (OPERA) by strategy.", base, **kw
        )
        self.uncoupled = Counter(
            PREFIX + "cd_uncoupled_steps",
            "Contrastive steps whose two branches were not scheduled together, by strategy.",
            base,
            **kw,
        )
        # Admission control (server.admission), by strategy.
        self.admission_queued, self.admission_rejected = (
            Counter(PREFIX + name, doc, base, **kw)
            for name, doc in (
                ("admission_queued", "Requests that waited for the decoding budget."),
                ("admission_rejected", "Requests refused with 429 after waiting for it."),
            )
        )
        self.admission_waiting, self.admission_running = (
            Gauge(PREFIX + name, doc, base, **kw)
            for name, doc in (
                ("admission_waiting", "Requests waiting for the decoding budget now."),
                ("admission_running", "Admitted generation requests in flight."),
            )
        )
        self.build_info = Gauge(
            PREFIX + "build_info",
            "Build information (value 1).",
            ["model_name", "version", "vllm_version", "transformers_version", "strategies"],
            **kw,
        )
        self.build_info.labels(
            model_name,
            versions.get("version", ""),
            versions.get("vllm_version", ""),
            versions.get("transformers_version", ""),
            ",".join(strategies),
        ).set(1)

    def label(self, strategy: str | None) -> str:
        return strategy if strategy in self.strategies else INVALID

    # StrategyObserver -------------------------------------------------------------
    def request_finished(
        self,
        strategy: str,
        *,
        ttft: float | None,
        e2e: float,
        finish_reason: str,
        generation_tokens: int,
    ) -> None:
        s = self.label(strategy)
        self.requests.labels(self.model_name, s, finish_reason).inc()
        self.e2e.labels(self.model_name, s).observe(e2e)
        if ttft is not None:
            self.ttft.labels(self.model_name, s).observe(ttft)
        self.gen_tokens.labels(self.model_name, s).observe(generation_tokens)

    def extra_forward_tokens(self, strategy: str, kind: str, tokens: int) -> None:
        self.extra_tokens.labels(self.model_name, self.label(strategy), kind).inc(tokens)

    def event_series(self) -> dict[Event, Counter]:
        return {Event.ROLLBACK: self.rollbacks, Event.UNCOUPLED_STEP: self.uncoupled}

    def event(self, strategy: str, name: Event, count: int = 1) -> None:
        self.event_series()[Event(name)].labels(self.model_name, self.label(strategy)).inc(count)

    # Admission control ---------------------------------------------------------------
    def admission_event(self, kind: str, strategy: str) -> None:
        """``server.admission.Admission`` events (see ``Admission.on_event``)."""
        s = self.label(strategy)
        if kind == "queued":
            self.admission_queued.labels(self.model_name, s).inc()
            self.admission_waiting.labels(self.model_name, s).inc()
        elif kind == "dequeued":
            self.admission_waiting.labels(self.model_name, s).dec()
        elif kind == "rejected":
            self.admission_rejected.labels(self.model_name, s).inc()
            self.admission_waiting.labels(self.model_name, s).dec()
        elif kind == "admitted":
            self.admission_running.labels(self.model_name, s).inc()
        elif kind == "released":
            self.admission_running.labels(self.model_name, s).dec()

    # HTTP layer -----------------------------------------------------------------------
    def http_error(self, strategy: str | None, status: int, error_type: str) -> None:
        self.errors.labels(self.model_name, self.label(strategy), str(status), error_type).inc()
