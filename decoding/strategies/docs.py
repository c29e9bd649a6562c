"""Strategy tables of README.md and docs/strategies.md, written from the declarations.

    python -m decoding.strategies.docs            # rewrite the generated tables
    python -m decoding.strategies.docs --check    # exit 1 if one is stale

Each table sits between ``<!-- generated:NAME -->`` and ``<!-- /generated -->`` markers;
the text around them is hand-written.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from decoding.strategies.base import Strategy
from decoding.strategies.registry import strategies

ROOT = Path(__file__).resolve().parents[2]
FILES = (ROOT / "README.md", ROOT / "docs" / "strategies.md", ROOT / "docs" / "families.md")
_BLOCK = re.compile(r"(<!-- generated:([\w-]+) -->\n)(.*?)(<!-- /generated -->)", re.S)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if v is None:
        return "null"
    return f'"{v}"' if isinstance(v, str) else f"{v:g}" if isinstance(v, float) else str(v)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _range(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return ", ".join(_value(v) for v in prop["enum"])
    if prop.get("type") == "boolean":
        return "bool"
    for option in prop.get("anyOf", []):
        if option.get("type") != "null":
            return _range(option) + " or null"
    lo = prop.get("minimum", prop.get("exclusiveMinimum"))
    hi = prop.get("maximum", prop.get("exclusiveMaximum"))
    left = "(" if "exclusiveMinimum" in prop else "["
    right = ")" if "exclusiveMaximum" in prop else "]"
    return f"{left}{_value(lo)}, {_value(hi)}{right}" if lo is not None else ""


def _properties(decl: type[Strategy]) -> dict[str, Any]:
    schema = decl.Params.model_json_schema()
    props = dict(schema.get("properties", {}))
    for prop in props.values():
        if "$ref" in prop:  # Literal fields are inlined by pydantic except when shared
            prop.update(schema["$defs"][prop["$ref"].split("/")[-1]])
    return props


def summary_table() -> str:
    rows = ["| strategy | what it does | parameters (defaults) |", "|---|---|---|"]
    for d in strategies():
        params = ", ".join(f"`{k}` {_value(p.get('default'))}" for k, p in _properties(d).items())
        rows.append(f"| `{d.name}` | {d.summary} | {params or 'none'} |")
    return "\n".join(rows) + "\n"


def engine_table() -> str:
    rows = [
        "| strategy | family | engine hooks | CUDA graphs | tensor parallel | speculative "
        "decoding | prefix caching | cost x plain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in strategies():
        e = d.engine
        hooks = ", ".join(f"`{m}.{p}`" for m, p in sorted(e.hooks)) or "none"
        rows.append(
            f"| `{d.name}` | {d.family.value} | {hooks} | {e.cuda_graphs.value} | "
            f"{'yes' if e.tensor_parallel else 'no (1 only)'} | "
            f"{'yes' if e.speculative_decoding else 'no'} | "
            f"{'required' if e.prefix_caching else 'any'} | {e.cost_factor:g} |"
        )
    return "\n".join(rows) + "\n"


def params_table(name: str) -> str:
    decl = next(d for d in strategies() if d.name == name)
    rows = ["| parameter | default | range | meaning | source |", "|---|---|---|---|---|"]
    for key, prop in _properties(decl).items():
        rows.append(
            f"| `{key}` | {_value(prop.get('default'))} | {_range(prop)} | "
            f"{_cell(prop.get('description', ''))} | {_cell(prop.get('source', ''))} |"
        )
    return "\n".join(rows) + "\n"


def families_table() -> str:
    """Model family x strategy: served, or refused (400) with the reason's first clause;
    per-family deviations are listed under the table in docs/families.md."""
    from decoding.families import FAMILIES
    from decoding.strategies.registry import available

    names = available()
    rows = ["| family | architectures | " + " | ".join(names) + " |"]
    rows.append("|---" * (len(names) + 2) + "|")
    for fam in FAMILIES:
        cells = []
        for name in names:
            if name in fam.undefined:
                cells.append("400")
            else:
                cells.append("yes*" if name in fam.deviations else "yes")
        archs = ", ".join(f"`{a}`" for a in fam.architectures)
        rows.append(f"| {fam.title} | {archs} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def deviations_list() -> str:
    from decoding.families import FAMILIES

    lines = []
    for fam in FAMILIES:
        for name, why in {**fam.undefined, **fam.deviations}.items():
            kind = "refused" if name in fam.undefined else "deviation"
            lines.append(f"- **{fam.title}, {name}** ({kind}): {_cell(why)}")
    return "\n".join(lines) + "\n"


def render_block(name: str) -> str:
    if name == "families":
        return families_table()
    if name == "family-deviations":
        return deviations_list()
    if name == "strategies":
        return summary_table()
    if name == "engine-needs":
        return engine_table()
    if name.startswith("params-"):
        return params_table(name[len("params-") :])
    raise KeyError(f"unknown generated table {name!r}")


def render(text: str) -> str:
    return _BLOCK.sub(lambda m: m.group(1) + render_block(m.group(2)) + m.group(4), text)


def stale(files: tuple[Path, ...] = FILES) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in files if render(p.read_text()) != p.read_text()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    if args.check:
        bad = stale()
        if bad:
            where = ", ".join(bad)
            print(f"stale generated tables in {where}: run python -m decoding.strategies.docs")
        return 1 if bad else 0
    for path in FILES:
        path.write_text(render(path.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
