"""``make bench``: everything the performance targets need, measured in one run.

1. Served path. Starts the server on the tiny checkpoint (or uses ``--url``) and, at each
   concurrency level, sends chat requests with an image for every strategy the server
   enables (``GET /version``), each at its defaults (``"decoding": {"strategy": name}``),
   greedy, with ``ignore_eos`` so every answer has ``--max-tokens`` tokens. Requests are
   streamed; a strategy whose streamed request gets a 400 is measured non-streamed.
   Each level records requests/s, generated tokens/s, p50/p95 latency and p50 TTFT.
2. ``beam-5``: plain vLLM beam search through the same server (``use_beam_search``,
   ``n`` = beam width 5, ``length_penalty`` 1.0), the baseline for OPERA. vLLM does not
   stream beam search, so it is measured non-streamed: TTFT = latency, and the tokens
   counted are those of the answer returned first (``choices[0]``, the best beam), not of
   all five beams.
3. Reference engine: batch-1 tokens/s of the same strategies on ``transformers``
   (``decoding.reference.bench.run``, same checkpoint, greedy, same max tokens), run
   after the served measurements (and after stopping a server this harness started), so
   neither competes with the other for the machine.
4. ``--overhead`` / ``--compare-url``: ``none`` on a second server that enables only
   ``none``, to price machinery that is loaded but unused.

Output (``--out``, default ``build/bench.json``)::

    {"records": [{strategy, concurrency, requests, streamed, tokens, wall_s, tokens_per_s,
                  requests_per_s, latency_p50_s, latency_p95_s, ttft_p50_s}, ...],
     "errors": [{strategy, concurrency, error}, ...],
     "reference": [{strategy, tokens, seconds, tokens_per_s, requests, max_new_tokens,
                    model, device, ignore_eos, rounds_tokens_per_s}, ...],
     "reference_error": str | null,
     "ratios": {"vs_none": {strategy: {concurrency: x}},
                "vs_reference": {strategy: {concurrency: x}},
                "vs_beam5": {"opera": {concurrency: x}}},
     "targets": [{strategy, ratio, concurrency, minimum, value, status}, ...],
     "overhead": null | {"url", "records": [...], "none_overhead_ratio": {concurrency: x}},
     "model", "max_tokens", "levels", "server": GET /version, "machine": {...}, "started"}

Every ratio compares two figures from this run on this machine; targets print as
MET / MISSED / N/A and never fail the run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai

from decoding.testing import synthetic
from server import bench_flood
from server import bench_report as report
from server.bench_report import BEAM, BEAM_WIDTH, Sample
from server.process import start_server, stop_server

PROMPT = "Describe the image."


def request_body(name: str) -> dict[str, Any]:
    """The non-OpenAI fields of a request for strategy ``name`` (or the beam baseline)."""
    if name == BEAM:
        # return_token_ids: count the best beam's tokens exactly (usage sums all beams).
        return {
            "use_beam_search": True,
            "n": BEAM_WIDTH,
            "length_penalty": 1.0,
            "ignore_eos": True,
            "return_token_ids": True,
        }
    return {"decoding": {"strategy": name}, "ignore_eos": True}  # fixed-length outputs


def messages(seed: int) -> list[dict[str, Any]]:
    return synthetic.chat_messages(synthetic.sample(seed)[0], PROMPT)


async def one_request(
    client: openai.AsyncOpenAI,
    model: str,
    name: str,
    chat: list[dict[str, Any]],
    max_tokens: int,
    stream: bool,
) -> Sample:
    kwargs: dict[str, Any] = {
        "model": model,
        "messages": chat,
        "max_tokens": max_tokens,
        "temperature": 0,
        "extra_body": request_body(name),
    }
    start = time.perf_counter()
    if not stream:
        resp = await client.chat.completions.create(**kwargs)
        total = time.perf_counter() - start
        best = resp.choices[0]
        ids = getattr(best, "token_ids", None)
        # With ignore_eos every choice has the same length, so usage / choices is exact.
        tokens = len(ids) if ids else resp.usage.completion_tokens // max(1, len(resp.choices))
        return total, total, tokens
    ttft = None
    tokens = 0
    chunks = await client.chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}
    )
    async for chunk in chunks:
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - start
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - start
    return total, ttft if ttft is not None else total, tokens


async def warm_up(client: openai.AsyncOpenAI, model: str, name: str, max_tokens: int) -> bool:
    """One request like the measured ones (first-use costs; a strategy may refuse some
    ``max_tokens``); returns whether ``name`` is measured streamed."""
    chat = messages(4999)
    if name == BEAM:
        await one_request(client, model, name, chat, max_tokens, stream=False)
        return False
    try:
        await one_request(client, model, name, chat, max_tokens, stream=True)
        return True
    except openai.BadRequestError:
        await one_request(client, model, name, chat, max_tokens, stream=False)
        return False


async def run_level(
    client: openai.AsyncOpenAI,
    model: str,
    name: str,
    concurrency: int,
    requests: int,
    max_tokens: int,
    stream: bool,
    first_seed: int,
) -> dict[str, Any]:
    sem = asyncio.Semaphore(concurrency)

    async def task(chat: list[dict[str, Any]]) -> Sample:
        async with sem:
            return await one_request(client, model, name, chat, max_tokens, stream)

    # Images are encoded before the clock starts: the client shares the machine's cores.
    chats = [messages(seed) for seed in range(first_seed, first_seed + requests)]
    start = time.perf_counter()
    samples = await asyncio.gather(*(task(chat) for chat in chats))
    wall = time.perf_counter() - start
    return report.level_record(name, concurrency, list(samples), wall, stream)


async def measure(
    url: str,
    names: list[str],
    levels: list[int],
    requests: int,
    max_tokens: int,
    rounds: int = 1,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Records (level-major, so the rows compared in a ratio are measured close in time)
    and errors; a strategy that fails is reported and left out, the run goes on. With
    ``rounds`` > 1 every level runs each strategy once per round, interleaved, and a row
    keeps every round's tokens/s (ratios are then medians of per-round ratios).

    Every measured request carries an image of its own: a repeated image would hit the
    server's image and prefix caches and favour whichever strategy runs later.
    """
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=900)
    model = (await client.models.list()).data[0].id
    records: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    failed: set[str] = set()
    seed = 5000
    for level in levels:
        # One concurrent burst first: the engine's first batched steps at a new batch
        # shape carry one-time costs that would land on whichever strategy runs first.
        warm = [messages(4000 + i) for i in range(level)]
        await asyncio.gather(
            *(one_request(client, model, "none", chat, max_tokens, True) for chat in warm)
        )
        runs: dict[str, list[dict[str, Any]]] = {}
        for _round in range(rounds):
            for name in names:
                if name in failed:
                    continue
                try:
                    stream = await warm_up(client, model, name, max_tokens)
                    n = max(requests, level)
                    rec = await run_level(client, model, name, level, n, max_tokens, stream, seed)
                    seed += n
                except openai.APIError as e:
                    failed.add(name)
                    runs.pop(name, None)
                    errors.append({"strategy": name, "concurrency": level, "error": str(e)})
                    print(f"  {name:<8} c={level:<3} failed: {e}", file=sys.stderr, flush=True)
                    continue
                runs.setdefault(name, []).append(rec)
                print(
                    f"  {name:<8} c={level:<3} {rec['tokens_per_s']:9.1f} tok/s",
                    file=sys.stderr,
                    flush=True,
                )
        records += [report.merge_rounds(runs[name]) for name in names if name in runs]
    await client.close()
    return records, errors


def server_info(url: str) -> tuple[dict[str, Any], str, str]:
    """(GET /version, served model id, its checkpoint path or hub id)."""
    version = httpx.get(url + "/version", timeout=30).json()
    card = httpx.get(url + "/v1/models", timeout=30).json()["data"][0]
    return version, card["id"], card.get("root") or card["id"]


@contextmanager
def serving(url: str | None, model: str, extra: list[str]) -> Iterator[str]:
    """``url`` as is, or a server this harness starts on ``model`` and stops afterwards."""
    if url is not None:
        yield url.rstrip("/")
        return
    log = Path(tempfile.mkdtemp()) / "server.log"
    served = start_server(Path(model), log, extra, timeout=600)
    try:
        yield served.url
    finally:
        stop_server(served)


def reference(
    checkpoint: str,
    names: list[str],
    requests: int,
    max_tokens: int,
    device: str | None,
    rounds: int = 3,
) -> list[dict[str, Any]]:
    """Batch-1 reference-engine records for the ``names`` it knows (greedy, defaults).

    Like the served requests, answers run to ``max_tokens`` (the engine's EOS set is
    emptied for the run): an answer that stops early spreads its prefill over fewer
    tokens and would understate the reference's tokens/s. All strategies run once per
    round and each keeps its best round: other work on the machine only ever slows a
    round down, and the reference's threads suffer badly from it.
    """
    from unittest import mock

    from decoding.reference import bench as ref_bench
    from decoding.reference import engine
    from decoding.reference.cli import load

    names = [s for s in names if s in ref_bench.all_strategies()]
    if not names:
        return []
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, processor = load(checkpoint, device)
    runs: dict[str, list[dict[str, Any]]] = {}
    with mock.patch.object(engine, "eos_ids", lambda *_: set()):
        for _ in range(rounds):
            for r in ref_bench.run(
                model, processor, tuple(names), requests, max_tokens, model_name=checkpoint
            ):
                runs.setdefault(r["strategy"], []).append(r)
    return [
        {
            **max(rs, key=lambda r: r["tokens_per_s"] or 0.0),
            "ignore_eos": True,
            "rounds_tokens_per_s": [r["tokens_per_s"] for r in rs],
        }
        for rs in runs.values()
    ]


def reference_step(
    args: argparse.Namespace, checkpoint: str, names: list[str]
) -> tuple[list[dict[str, Any]], str | None]:
    """(reference records, why there are none); a failure here never loses the run."""
    if args.no_reference:
        return [], "skipped (--no-reference)"
    if args.model is None and not Path(checkpoint).is_dir():
        return [], f"skipped: {checkpoint!r} is not a local checkpoint; pass --model"
    try:
        ref = reference(
            checkpoint,
            names,
            args.reference_requests,
            args.max_tokens,
            args.reference_device,
            args.reference_rounds,
        )
    except Exception as e:  # the served figures are still worth writing
        return [], f"{type(e).__name__}: {e}"
    return ref, None if ref else "no benchmarked strategy is known to the reference engine"


def print_report(result: dict[str, Any], args: argparse.Namespace) -> None:
    records, rat = result["records"], result["ratios"]
    print(f"served ({result['model']}, {result['max_tokens']} tokens per answer, greedy)")
    print(report.table(records, rat))
    if result["reference"]:
        print(
            f"\nreference engine (batch 1, {args.reference_requests} requests per strategy, "
            f"best of {args.reference_rounds} rounds)"
        )
        print(report.reference_table(result["reference"]))
    else:
        print(f"\nreference engine: {result['reference_error']}")
    if result["overhead"] is not None:
        print("\nloaded-but-unused overhead")
        print(report.overhead_lines(result["overhead"], records))
    if result.get("compiled") is not None:
        print("\ncompiled (torch.compile) over eager tokens/s")
        print(report.compiled_lines(result["compiled"]))
    print(f"\ntargets (at concurrency {report.TARGET_CONCURRENCY})")
    print(report.target_lines(result["targets"]))
    cpus, load = result["machine"]["cpu_count"], result["machine"]["load_average_1m_at_end"]
    if cpus and load > cpus:
        print(f"note: load average {load} on {cpus} CPUs: other work shared the machine")
    for e in result["errors"]:
        print(f"error: {e['strategy']} at concurrency {e['concurrency']}: {e['error']}")


def machine() -> dict[str, Any]:
    """Where the harness (and a server it started) ran."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        # Other work on the machine skews every figure; the load says how much there was.
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if shutil.which("nvidia-smi"):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        )
        info["gpus"] = [g.strip() for g in out.stdout.splitlines() if g.strip()]
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Per-strategy throughput benchmark over HTTP.")
    ap.add_argument("--url", help="a running server; default: start one on --model")
    ap.add_argument(
        "--model",
        help="checkpoint to serve when no --url (default: the tiny one); with --url, the "
        "served checkpoint for the reference engine (default: the server's, if local)",
    )
    ap.add_argument(
        "--server-args",
        default="",
        help="extra arguments for the servers this harness starts (e.g. '--max-logprobs 64')",
    )
    ap.add_argument("--strategies", help="comma-separated (default: all the server enables)")
    ap.add_argument(
        "--family",
        help="bench a model family's tiny checkpoint instead of --model; 'all' benches every "
        "family in turn (one table and one build/bench-<family>.json each)",
    )
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--requests", type=int, default=16, help="requests per level (>= conc)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every level this many times, strategies interleaved; ratios are medians "
        "of per-round ratios (steadier on a shared machine)",
    )
    ap.add_argument("--no-beam", action="store_true", help="skip the beam-5 baseline")
    ap.add_argument("--no-reference", action="store_true", help="skip the reference engine")
    ap.add_argument("--reference-requests", type=int, default=4, help="per strategy and round")
    ap.add_argument("--reference-rounds", type=int, default=3, help="best round counts")
    ap.add_argument("--reference-device", help="default: cuda if available, else cpu")
    ap.add_argument(
        "--overhead",
        action="store_true",
        help="also measure none on a server started with --strategies none",
    )
    ap.add_argument(
        "--compare-url", help="a running none-only server for the overhead (implies --overhead)"
    )
    ap.add_argument(
        "--compiled",
        action="store_true",
        help="also measure every strategy on a compiled server (--no-enforce-eager) and none "
        "on a compiled none-only server: compiled vs eager, and the compiled overhead",
    )
    ap.add_argument(
        "--flood",
        choices=sorted(bench_flood.FLOODS),
        help="instead: plain p50/p95 alone and under a flood of this costly request",
    )
    ap.add_argument("--flood-clients", type=int, default=4, help="flooding clients")
    ap.add_argument("--flood-max-tokens", type=int, default=16, help="per flood request")
    ap.add_argument("--out", type=Path, default=None, help="default build/bench.json")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = Path("build/bench-flood.json" if args.flood else "build/bench.json")
    if args.overhead and args.url and not args.compare_url:
        ap.error("--overhead with --url needs --compare-url (a none-only server beside it)")
    return args


def flood_main(args: argparse.Namespace, model: str, extra: list[str], started: str) -> None:
    with serving(args.url, model, extra) as url:
        version = server_info(url)[0]
        result = asyncio.run(
            bench_flood.run(
                url,
                args.flood,
                clients=args.flood_clients,
                concurrency=4,
                requests=max(args.requests, 32),
                max_tokens=args.max_tokens,
                flood_max_tokens=args.flood_max_tokens,
            )
        )
    result |= {"server": version, "machine": machine(), "started": started}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(bench_flood.report(result))
    print(f"wrote {args.out}")


def measure_compiled(
    model: str | None,
    extra: list[str],
    names: list[str],
    levels: list[int],
    args: argparse.Namespace,
    eager: list[dict[str, Any]],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every strategy on a compiled server, then none on a compiled none-only server."""
    if model is None:
        raise SystemExit("--compiled starts its own servers: give --model (or no --url)")
    flags = [*extra, "--no-enforce-eager"]
    with serving(None, model, flags) as url:
        records, errors = asyncio.run(
            measure(url, names, levels, args.requests, args.max_tokens, args.rounds)
        )
    with serving(None, model, [*flags, "--strategies", "none"]) as url:
        none_only, errs = asyncio.run(
            measure(url, ["none"], levels, args.requests, args.max_tokens, args.rounds)
        )
    errors = [{**e, "server": "compiled"} for e in errors + errs]
    return {
        "records": records,
        "none_only_records": none_only,
        "levels": [str(c) for c in levels],
        "vs_eager": report.per_strategy_ratio(records, eager),
        "none_overhead_ratio": report.overhead_ratio(records, none_only),
    }, errors


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.family:
        from decoding.families import FAMILIES
        from decoding.testing.tiny_models import ensure_tiny

        if args.url:
            raise SystemExit("--family starts its own server: drop --url")
        names = [f.name for f in FAMILIES] if args.family == "all" else [args.family]
        out = args.out
        for family in names:
            print(f"\n=== {family} ===")
            args.model = str(ensure_tiny(family))
            args.out = out if len(names) == 1 else out.with_name(f"bench-{family}.json")
            bench_one(args)
        return
    bench_one(args)


def bench_one(args: argparse.Namespace) -> None:
    levels = [int(x) for x in args.concurrency.split(",")]
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    model = args.model
    if args.url is None and model is None:
        from decoding.testing.tiny_llava import ensure_tiny_llava

        model = str(ensure_tiny_llava())

    extra = shlex.split(args.server_args)
    if args.flood:
        flood_main(args, model, extra, started)
        return
    with serving(args.url, model, extra) as url:
        version, model_id, checkpoint = server_info(url)
        names = report.ordered(
            args.strategies.split(",") if args.strategies else version.get("strategies", ["none"])
        )
        # Strategies undefined on the served model family answer 400: not benched.
        names = [n for n in names if n not in (version.get("unavailable") or {})]
        variants = names + ([] if args.no_beam else [BEAM])
        records, errors = asyncio.run(
            measure(url, variants, levels, args.requests, args.max_tokens, args.rounds)
        )

    overhead = None
    if args.overhead or args.compare_url:
        with serving(args.compare_url, model, [*extra, "--strategies", "none"]) as url2:
            others, errs = asyncio.run(
                measure(url2, ["none"], levels, args.requests, args.max_tokens, args.rounds)
            )
        errors += [{**e, "server": "none-only"} for e in errs]
        overhead = {
            "url": args.compare_url,
            "records": others,
            "none_overhead_ratio": report.overhead_ratio(records, others),
        }

    compiled = None
    if args.compiled:
        compiled, errs = measure_compiled(model, extra, names, levels, args, records)
        errors += errs

    measured = report.ordered([r["strategy"] for r in records])  # not the ones that failed
    ref, ref_note = reference_step(args, model or checkpoint, measured)
    rat = report.ratios(records, ref)
    if compiled is not None:
        rat["compiled_overhead"] = {"none": compiled["none_overhead_ratio"]}
    result = {
        "records": records,
        "errors": errors,
        "reference": ref,
        "reference_error": ref_note,
        "ratios": rat,
        "targets": report.targets(rat, names),
        "overhead": overhead,
        "compiled": compiled,
        "model": model_id,
        "max_tokens": args.max_tokens,
        "levels": levels,
        "server": version,
        "machine": machine(),
        "started": started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")

    print_report(result, args)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
