"""``python -m server --model PATH_OR_ID [--strategies ...] [vLLM engine args]``."""

from __future__ import annotations

import argparse
import logging
import sys

from decoding.engine import frontend
from decoding.engine.client import served_strategies
from decoding.strategies import available
from server.app import __version__, customize, served_model_name
from server.metrics import Metrics

log = logging.getLogger("lucid.server")


def parse_strategies(value: str) -> list[str]:
    """``all`` or a comma-separated subset of the registry (``none`` is always on)."""
    served = [s for s in available() if s in served_strategies()]
    if value.strip() == "all":
        return served
    names = [s.strip() for s in value.split(",") if s.strip()]
    bad = [s for s in names if s not in served]
    if bad:
        raise SystemExit(
            f"--strategies: unknown or unserved strategy {bad[0]!r}; available: {', '.join(served)}"
        )
    return ["none", *[s for s in names if s != "none"]]


def prepare(argv: list[str]) -> tuple[argparse.Namespace, list[str], list[str]]:
    """Parse server arguments; returns (args, enabled strategies, platform notes)."""
    parser = frontend.make_parser(
        "OpenAI-compatible VLM server with per-request hallucination-mitigating decoding."
    )
    group = parser.add_argument_group("decoding strategies")
    group.add_argument(
        "--strategies",
        default="all",
        help="Comma-separated strategies this deployment accepts, or 'all'.",
    )
    group.add_argument(
        "--max-request-bytes",
        type=int,
        default=32 * 1024 * 1024,
        help="Largest accepted request body (images included); larger bodies get 413.",
    )
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("--model is required (a local checkpoint path or a hub id)")
    enabled = parse_strategies(args.strategies)
    notes = frontend.apply_platform_defaults(args, argv)
    frontend.validate_args(args)
    return args, enabled, notes


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, enabled, notes = prepare(argv)
    logging.basicConfig(level=logging.INFO)
    if notes:
        log.info("CPU platform defaults applied: %s", ", ".join(notes))
    log.info("strategies enabled: %s", ", ".join(enabled))
    versions = {"version": __version__, **frontend.versions()}
    metrics = Metrics(served_model_name(args), enabled, versions)

    def hook(app, client, args):  # noqa: ANN001
        customize(
            app,
            enabled=enabled,
            metrics=metrics,
            versions=versions,
            max_body_bytes=args.max_request_bytes,
        )

    import uvloop

    uvloop.run(frontend.run_server(args, hook, observer=metrics))


if __name__ == "__main__":
    main()
