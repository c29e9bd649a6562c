"""Write the chart's strategy data from the strategy declarations.

    python deploy/helm/gen_strategies.py            # rewrite strategies.json and the schema
    python deploy/helm/gen_strategies.py --check    # exit 1 if either is stale

``lucid/strategies.json`` holds each strategy's engine needs and cost factor
(:func:`decoding.strategies.rules.chart_data`); the templates read it, so the chart
applies the same rules as the server. The schema's strategy enum and ``costFactor`` keys
are written from the same registry. Extension strategies (``LUCID_STRATEGY_MODULES``) are
included when the variable is set.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from decoding.strategies.rules import chart_data  # noqa: E402

CHART = Path(__file__).resolve().parent / "lucid"
DATA = CHART / "strategies.json"
SCHEMA = CHART / "values.schema.json"


def render(chart: Path = CHART) -> dict[Path, str]:
    """File path -> expected text, for ``chart``."""
    data = chart_data()
    names = list(data["strategies"])
    schema = json.loads((chart / SCHEMA.name).read_text())
    strategies = schema["properties"]["strategies"]["properties"]
    strategies["enabled"]["items"]["enum"] = names
    factors: dict[str, Any] = {}
    for name, facts in data["strategies"].items():
        factors[name] = {
            "type": "number",
            "minimum": 1,
            "description": f"Cost of a `{name}` request relative to plain decoding "
            f"(declared: {facts['costFactor']:g}).",
        }
    strategies["costFactor"]["properties"] = factors
    return {
        chart / DATA.name: json.dumps(data, indent=2) + "\n",
        chart / SCHEMA.name: json.dumps(schema, indent=2) + "\n",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    args = ap.parse_args(argv)
    stale = []
    for path, text in render().items():
        if path.exists() and path.read_text() == text:
            continue
        if args.check:
            stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run python deploy/helm/gen_strategies.py")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
