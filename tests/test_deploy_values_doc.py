"""The chart's values reference (VALUES.md) is generated from values.schema.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


from tests.helm_scripts import load as _load  # noqa: E402

doc = _load("gen_values_doc")


def test_values_md_is_up_to_date() -> None:
    assert doc.main(["--check"]) == 0, "run: python deploy/helm/gen_values_doc.py"


def test_every_value_is_documented_with_its_default() -> None:
    schema = json.loads((doc.CHART / "values.schema.json").read_text())
    values = yaml.safe_load((doc.CHART / "values.yaml").read_text())
    assert doc.undocumented(schema, values) == []
    text = doc.OUT.read_text()
    assert "| `strategies.enabled` | list of `none` \\| `vcd`" in text
    assert '`["none", "vcd", "avc", "damro", "opera", "var"]`' in text
    assert "| `drain.maxRequestSeconds` | integer | `60` |" in text
    for key in ("metrics.serviceMonitor.enabled", "autoscaling.keda.enabled", "benchmark.runs"):
        assert f"| `{key}` |" in text


def test_schema_keeps_values_yaml_honest() -> None:
    schema = json.loads((doc.CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert doc.undocumented(schema, {"engine": {"newKnob": 1}}) == ["engine.newKnob"]


@pytest.fixture()
def chart_copy(tmp_path: Path) -> Path:
    target = tmp_path / "lucid"
    shutil.copytree(doc.CHART, target)
    return target


def test_stale_or_incomplete_docs_are_caught(chart_copy: Path) -> None:
    values = yaml.safe_load((chart_copy / "values.yaml").read_text())
    values["drain"]["maxRequestSeconds"] = 90
    (chart_copy / "values.yaml").write_text(yaml.safe_dump(values))
    assert doc.render(chart_copy) != doc.OUT.read_text()
    schema = json.loads((chart_copy / "values.schema.json").read_text())
    del schema["properties"]["drain"]["properties"]["preStopSleepSeconds"]["description"]
    (chart_copy / "values.schema.json").write_text(json.dumps(schema))
    with pytest.raises(ValueError, match="drain.preStopSleepSeconds has no description"):
        doc.render(chart_copy)


def test_guide_commands_use_real_values_and_files() -> None:
    import re

    import helm_python as helm

    guide = (ROOT / "deploy" / "README.md").read_text()
    sets = re.findall(r"--set ([\w.]+=\S+)", guide)
    assert {s.split("=")[0] for s in sets} >= {"image.repository", "hfToken.existingSecret"}
    with helm.Chart.load(doc.CHART) as chart:
        for expression in sets:
            values = helm.parse_set_string(expression)
            chart.validate_schema(values)
            chart.render(values, name="lucid", namespace="lucid")
    for target in re.findall(r"\]\(([^)#]+)\)", guide):
        if not target.startswith("http"):
            assert (ROOT / "deploy" / target).exists(), target
    for path in re.findall(r"`((?:helm|docker)/[\w./-]+)`", guide):
        assert (ROOT / "deploy" / path).exists(), path
