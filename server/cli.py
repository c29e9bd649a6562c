"""``python -m server --model PATH_OR_ID [--strategies ...] [vLLM engine args]``."""

from __future__ import annotations

import argparse
import logging
import sys

from decoding.engine import frontend
from decoding.strategies import available
from server.app import Service, add_admission_args

log = logging.getLogger("lucid.server")


def parse_strategies(value: str) -> list[str]:
    """``all`` or a comma-separated subset of the registry (``none`` is always on).

    A name outside the registry is a start-up error; so is an enabled strategy the engine
    cannot serve (checked by :func:`decoding.engine.frontend.configure_strategies`).
    """
    registered = available()
    names = (
        registered if value.strip() == "all" else [s.strip() for s in value.split(",") if s.strip()]
    )
    bad = [s for s in names if s not in registered]
    if bad:
        raise SystemExit(
            f"--strategies: unknown strategy {bad[0]!r}; available: {', '.join(registered)}"
        )
    return ["none", *[s for s in registered if s != "none" and s in names]]


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
    add_admission_args(parser)
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("--model is required (a local checkpoint path or a hub id)")
    enabled = parse_strategies(args.strategies)
    notes = frontend.apply_platform_defaults(args, argv)
    notes += frontend.configure_strategies(args, enabled)
    frontend.validate_args(args)
    return args, enabled, notes


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, enabled, notes = prepare(argv)
    logging.basicConfig(level=logging.INFO)
    if notes:
        log.info("engine settings applied: %s", ", ".join(notes))
    log.info("strategies enabled: %s", ", ".join(enabled))
    for kind, mode in frontend.execution_summary(args, enabled)["steps"].items():
        log.info("steps with %s rows: %s", kind, mode)
    service = Service(args, enabled)

    def hook(app, client, args):  # noqa: ANN001
        service.install(app, client)

    import uvloop

    uvloop.run(frontend.run_server(args, hook, observer=service.metrics))


if __name__ == "__main__":
    main()
