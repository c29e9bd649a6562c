"""Job settings are data: a versioned YAML per benchmark, overridable from the command line.

The resolved settings are stored in every results file, and ``--config results.json``
reads them back, so a run can be repeated from its results alone. An output folder
remembers the settings its answers were made with (``run.json``) and refuses to mix in
answers made with different ones.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from eval.jobs.runner import JobError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
SETTINGS_VERSION = 1

#: Settings that change the answers (the rest only change scoring or speed).
ANSWER_KEYS = {
    "pope": ("questions", "images", "prompt", "sampling"),
    "chair": ("image_set", "images", "image_template", "prompt", "sampling"),
}


def load_settings(benchmark: str, path: str | Path | None = None) -> dict[str, Any]:
    """Settings from a YAML file (default ``eval/configs/<benchmark>.yaml``) or from the
    ``settings`` of a results JSON."""
    p = Path(path) if path else CONFIG_DIR / f"{benchmark}.yaml"
    if not p.exists() and path and (CONFIG_DIR / f"{path}.yaml").exists():
        p = CONFIG_DIR / f"{path}.yaml"  # a preset name such as "pope-vcd"
    if not p.exists():
        raise JobError(f"settings file {p} not found")
    data = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
    if isinstance(data, dict) and "settings" in data and "benchmark" in data:
        data = data["settings"]  # a results file
    if not isinstance(data, dict) or data.get("benchmark") != benchmark:
        raise JobError(f"{p}: not {benchmark} settings")
    if data.get("settings_version") != SETTINGS_VERSION:
        raise JobError(f"{p}: settings_version must be {SETTINGS_VERSION}")
    return data


def configured_strategies(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings['strategies']`` as ``{name: params}``; ``all`` means every declared
    strategy at its defaults (the papers' values), in the registry's order."""
    configured = settings.get("strategies") or {"none": {}}
    if configured == "all":
        from decoding.strategies import available

        return {name: {} for name in available()}
    if not isinstance(configured, dict):
        raise JobError(f"strategies must be 'all' or a mapping, got {configured!r}")
    return dict(configured)


def select_strategies(settings: dict[str, Any], names: list[str] | None) -> dict[str, Any]:
    """Restrict ``settings['strategies']`` to ``names`` (unknown names get server defaults)."""
    configured = configured_strategies(settings)
    if not names:
        return dict(configured)
    return {n: dict(configured.get(n) or {}) for n in names}


def check_manifest(out_dir: Path, benchmark: str, settings: dict[str, Any]) -> None:
    """Refuse to resume into ``out_dir`` if its answers were made with other settings."""
    path = out_dir / "run.json"
    current = {k: settings.get(k) for k in ANSWER_KEYS[benchmark]}
    strategies = copy.deepcopy(settings["strategies"])
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("benchmark") != benchmark:
            raise JobError(f"{out_dir} holds a {old.get('benchmark')} run; use another --out")
        diff = [k for k in current if old["answer_settings"].get(k) != current[k]]
        diff += [
            f"strategies.{n}"
            for n, p in strategies.items()
            if n in old["strategies"] and old["strategies"][n] != p
        ]
        if diff:
            raise JobError(
                f"{out_dir} holds answers made with different {', '.join(diff)}; "
                "use another --out (or delete the folder) to start afresh"
            )
        strategies = {**old["strategies"], **strategies}
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {"benchmark": benchmark, "answer_settings": current, "strategies": strategies},
            indent=2,
        )
        + "\n"
    )
