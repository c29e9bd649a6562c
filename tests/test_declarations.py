"""One declaration per strategy: everything derived from it stays consistent, and the
checks fail loudly when a piece is missing (no server needed)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from decoding.strategies import available, get_strategy
from decoding.strategies import docs as strategy_docs
from decoding.strategies.base import Family, Strategy, StrategyParams
from decoding.strategies.contrast import BlindTokens, OutlierTokens, PixelContrast
from decoding.strategies.registry import register_strategy, unregister_strategy
from decoding.strategies.rules import deployment_errors, rules_for
from decoding.wire import (
    ATTENTION,
    ENGINE_KEY,
    BlindMask,
    OperaProbe,
    PairSettings,
    VarSettings,
    WireError,
    decode_decoding,
    decode_engine,
    encode_decoding,
)
from tests.helm_scripts import load as load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def hooks_snapshot():  # noqa: ANN201
    """The worker hook table, restored after the test."""
    from decoding.engine.worker import hooks
    from decoding.engine.worker.plugin import load_worker_modules

    load_worker_modules()
    saved = {point: list(entries) for point, entries in hooks._HOOKS.items()}
    yield hooks
    hooks._HOOKS.clear()
    hooks._HOOKS.update(saved)


# Declarations -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", available())
def test_every_parameter_has_a_description_default_and_source(name: str) -> None:
    decl = get_strategy(name)
    assert decl.summary and decl.__doc__
    for key, field in decl.Params.model_fields.items():
        extra = field.json_schema_extra or {}
        assert field.description, f"{name}.{key} has no description"
        assert extra.get("source"), f"{name}.{key} names no source"
        assert extra.get("paper_default") == field.default, f"{name}.{key}"


def test_registry_order_and_families() -> None:
    assert available()[0] == "none"
    fam = {n: get_strategy(n).family for n in available()}
    assert fam["none"] == Family.PLAIN and fam["var"] == Family.ATTENTION_EDIT
    assert {n for n, f in fam.items() if f == Family.CONTRASTIVE} >= {"vcd", "avc", "damro"}
    for name in available():
        decl = get_strategy(name)
        assert (decl.contrast is not None) == (decl.family == Family.CONTRASTIVE), name


def test_checks_do_not_change_the_request() -> None:
    opera = get_strategy("opera")
    body = {"n": 2, "temperature": 0, "messages": []}
    frozen = json.dumps(body)
    opera.check_request(opera.Params(), body)
    assert json.dumps(body) == frozen
    adjusted = opera.adjust_request(opera.Params(), body)
    assert "temperature" not in adjusted and json.dumps(body) == frozen


def test_cost_follows_the_parameters() -> None:
    opera = get_strategy("opera")
    assert opera.cost(opera.Params()) == opera.engine.cost_factor == 30
    assert opera.cost(opera.Params(num_beams=16, num_candidates=32)) == 16 * 33
    assert get_strategy("vcd").cost(get_strategy("vcd").Params()) == 2


# Engine rules -------------------------------------------------------------------------------
def test_rules_of_all_strategies() -> None:
    rules = rules_for(available())
    assert rules.hooked and rules.cuda_graphs.value == "NONE"
    assert set(rules.graphs_set_by) == {"avc", "var"}
    assert rules.max_logprobs == -1 and rules.needs_prefix_caching == ("opera",)
    assert set(rules.no_tensor_parallel) == {"avc", "damro", "opera"}
    assert rules_for(["none"]).hooked is False
    assert rules_for(["none", "opera"]).cuda_graphs.value == "PIECEWISE"


def test_deployment_errors_name_strategies_and_setting() -> None:
    rules = rules_for(["none", "vcd", "opera"])
    errors = deployment_errors(
        rules, speculative=True, tensor_parallel_size=2, prefix_caching=False, cudagraph_mode="FULL"
    )
    joined = " ".join(errors)
    assert len(errors) == 3  # any CUDA-graph mode is fine: modes are chosen per step
    assert "speculative" in joined and "vcd, opera" in joined
    assert "tensor_parallel_size=2" in joined and "prefix caching is off" in joined
    none = deployment_errors(
        rules_for(["none"]), speculative=True, tensor_parallel_size=8, prefix_caching=False,
        cudagraph_mode="FULL",
    )  # fmt: skip
    assert none == []


def test_server_refuses_a_deployment_it_cannot_run(monkeypatch, llava_family) -> None:  # noqa: ANN001
    from decoding.engine import frontend

    monkeypatch.setattr(frontend, "is_cpu", lambda: False)
    args = frontend.make_parser("t").parse_args(["--model", "m", "--tensor-parallel-size", "2"])
    with pytest.raises(frontend.DeploymentError, match="damro"):
        frontend.configure_strategies(args, ["none", "damro"])
    args = frontend.make_parser("t").parse_args(["--model", "m", "--tensor-parallel-size", "2"])
    assert frontend.configure_strategies(args, ["none", "vcd", "var"])  # TP-safe hooks


# Served pieces exist for every declaration ---------------------------------------------------
def test_every_enabled_strategy_is_served(hooks_snapshot) -> None:  # noqa: ANN001
    from decoding.engine import frontend

    frontend.check_served(available())


def test_a_missing_hook_fails_start_up(hooks_snapshot) -> None:  # noqa: ANN001
    from decoding.engine import frontend

    hooks_snapshot.unregister("var", ATTENTION)
    with pytest.raises(frontend.DeploymentError, match=r"'var' needs engine hooks var\.attention"):
        frontend.check_served(["none", "var"])
    frontend.check_served(["none", "vcd"])  # others are unaffected


def test_an_unknown_runner_fails_start_up(hooks_snapshot) -> None:  # noqa: ANN001
    from decoding.engine import frontend

    @register_strategy
    class Orphan(Strategy):
        name = "orphan"
        summary = "x"
        family = Family.BEAM_SEARCH
        runner = "nowhere"

    try:
        with pytest.raises(frontend.DeploymentError, match="runner 'nowhere'"):
            frontend.check_served(["none", "orphan"])
    finally:
        unregister_strategy("orphan")


def _emitted(decl: type[Strategy]) -> list:
    """The engine settings the strategy's runner emits, for the tiny model's profile."""
    from decoding.engine.runners.contrast_inputs import Contrast
    from decoding.profiles import load_profile

    params = decl.Params()
    if decl.family == Family.CONTRASTIVE:
        engine = {OutlierTokens: "outliers", BlindTokens: "blind_mask", PixelContrast: None}
        kind = engine[type(decl.contrast)]
        blind = BlindMask(0.5, 1.0, "zeros", 3, 4) if kind == "blind_mask" else None
        Contrast({}, engine=kind, blind=blind)  # the runner's own type accepts it
        return [
            PairSettings(decl.name, "p", "main", 1.0, 0.1),
            PairSettings(decl.name, "p", "contrast", contrast=kind, blind=blind),
        ]
    if decl.family == Family.BEAM_SEARCH:
        return [OperaProbe(decl.name, 3, 10, ((1, 5),), 5)]
    profile = dataclasses.replace(load_profile("tiny-llava"), image_token_id=4)
    settings = decl.engine_settings(params, profile, 4)
    return [] if settings is None else [settings]


@pytest.mark.parametrize("name", available())
def test_runner_settings_need_only_declared_hooks(name: str) -> None:
    decl = get_strategy(name)
    for settings in _emitted(decl):
        assert settings.needs() <= decl.engine.hooks, (name, settings)
    assert bool(_emitted(decl)) == bool(decl.engine.hooks)


# Wire format --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "settings",
    [
        PairSettings("vcd", "r/0/0", "main", 1.0, 0.1),
        PairSettings("avc", "r/0/0", "contrast", contrast="blind_mask",
                     blind=BlindMask(0.5, 1.0, "zeros", 12, 4)),
        VarSettings("var", 0.4, 0.5, 0.2, 6.0, (17, 93), (1, 2), 4),
        OperaProbe("opera", 3, 40, ((2, 10), (20, 30)), 5),
    ],
)  # fmt: skip
def test_engine_settings_round_trip(settings) -> None:  # noqa: ANN001
    assert decode_engine(settings.to_json()) == settings
    assert json.loads(settings.to_json())["kind"] == settings.kind


def test_engine_settings_that_do_not_decode_are_errors() -> None:
    with pytest.raises(WireError, match="unknown engine settings kind 'cdx'"):
        decode_engine('{"kind": "cdx", "strategy": "vcd"}')
    with pytest.raises(WireError, match="unexpected fields"):
        decode_engine('{"kind": "cd", "strategy": "vcd", "pair": "p", "role": "main", "x": 1}')
    with pytest.raises(WireError):
        decode_engine('{"kind": "var", "strategy": "var"}')


def test_decoding_object_round_trip() -> None:
    raw = encode_decoding("vcd", {"alpha": 1.0, "beta": 0.1})
    assert decode_decoding(raw) == ("vcd", {"alpha": 1.0, "beta": 0.1})


def test_rows_without_their_hook_are_failed(hooks_snapshot) -> None:  # noqa: ANN001
    from vllm.sampling_params import SamplingParams

    from decoding.engine.worker.rows import STEP, make_row

    var = VarSettings("var", 0.4, 0.5, 0.2, 6.0, (17, 93), (1, 2), 4)
    row = make_row(SamplingParams(extra_args={ENGINE_KEY: var.to_json()}), [1, 4], [])
    broken = make_row(SamplingParams(extra_args={ENGINE_KEY: '{"kind": "?"}'}), [1], [])
    assert make_row(SamplingParams(), [1], []) is None
    saved = dict(STEP.rows)
    try:
        STEP.rows.clear()
        STEP.rows.update({0: row, 1: broken})
        assert list(STEP.faulty()) == [1] and broken.strategy == "unknown"
        hooks_snapshot.unregister("var", ATTENTION)
        assert list(STEP.faulty()) == [0, 1]
        assert row.unmet() == {("var", ATTENTION)}
    finally:
        STEP.rows.clear()
        STEP.rows.update(saved)


def test_hook_order_is_explicit(hooks_snapshot) -> None:  # noqa: ANN001
    table = hooks_snapshot.table()
    by_point: dict[str, list[str]] = {}
    for point, mechanism, _ in table:
        by_point.setdefault(point, []).append(mechanism)
    assert by_point["forward"] == ["var", "blind_mask"]
    assert by_point["attention"] == ["blind_mask", "opera", "var"]
    assert by_point["logits"] == ["cd", "opera"]
    # Registration order does not matter: re-registering keeps the declared position.
    fn = hooks_snapshot.at("attention")[0]
    hooks_snapshot.register("attention", "blind_mask", 10)(fn)
    assert [m for p, m, _ in hooks_snapshot.table() if p == "attention"][0] == "blind_mask"


# Generated artefacts ------------------------------------------------------------------------
def test_chart_strategy_data_is_generated_from_the_declarations() -> None:
    gen = load_script("gen_strategies")
    for path, text in gen.render().items():
        assert path.read_text() == text, f"{path.name} is stale: run {gen.__file__}"


def test_stale_chart_data_is_detected(tmp_path: Path) -> None:
    gen = load_script("gen_strategies")
    chart = tmp_path / "lucid"
    shutil.copytree(gen.CHART, chart)
    data = json.loads((chart / "strategies.json").read_text())
    del data["strategies"]["var"]
    (chart / "strategies.json").write_text(json.dumps(data))
    stale = [p.name for p, text in gen.render(chart).items() if p.read_text() != text]
    assert stale == ["strategies.json"]


def test_strategy_tables_in_the_docs_are_generated() -> None:
    assert strategy_docs.stale() == [], "run python -m decoding.strategies.docs"
    readme = (ROOT / "README.md").read_text()
    for name in available():
        assert f"| `{name}` |" in readme


def test_a_new_declaration_appears_in_every_derived_list() -> None:
    from server import bench_report

    class P(StrategyParams):
        pass

    @register_strategy
    class Extra(Strategy):
        name = "extra"
        summary = "an extra plain strategy"
        Params = P

    try:
        assert "extra" in available()
        assert "extra" in load_script("gen_strategies").render()[load_script("gen_strategies").DATA]
        assert "| `extra` | an extra plain strategy |" in strategy_docs.summary_table()
        assert "extra" in bench_report.ordered(["extra", "none"])
        from eval.jobs.settings import configured_strategies

        assert "extra" in configured_strategies({"strategies": "all"})
        readme = (ROOT / "README.md").read_text()
        assert strategy_docs.render(readme) != readme  # the committed table lacks it
    finally:
        unregister_strategy("extra")


def test_every_reported_event_and_token_kind_has_a_series() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from decoding.observe import Event, ExtraTokens
    from server.metrics import Metrics

    reg = CollectorRegistry()
    m = Metrics("m", available(), {}, registry=reg)
    assert set(m.event_series()) == set(Event)
    for event in Event:
        m.event("opera", event)
    for kind in ExtraTokens:
        m.extra_forward_tokens("vcd", kind, 3)
    text = generate_latest(reg).decode()
    assert 'lucid:rollbacks_total{model_name="m",strategy="opera"} 1.0' in text
    for kind in ExtraTokens:
        assert f'kind="{kind}"' in text


# Model families -------------------------------------------------------------------------------
def test_family_from_the_checkpoint(tiny_llava_dir) -> None:  # noqa: ANN001
    from transformers import AutoConfig

    from decoding.engine import families, frontend

    config = AutoConfig.from_pretrained(tiny_llava_dir)
    family = families.family_for(config)
    assert family is families.LLAVA_15 and family.image_token(config) == 4
    args = frontend.make_parser("t").parse_args(["--model", str(tiny_llava_dir)])
    assert frontend.model_family(args) is families.LLAVA_15
    notes = frontend.configure_strategies(args, ["none", "vcd"])
    assert args.hf_overrides["architectures"] == [family.hooked_architecture]
    assert "family=llava-1.5" in notes


@pytest.mark.parametrize(
    ("arch", "family"),
    [
        ("LlavaNextForConditionalGeneration", "llava-next"),
        ("LlavaOnevisionForConditionalGeneration", "llava-onevision"),
        ("Qwen2_5_VLForConditionalGeneration", "qwen2.5-vl"),
        ("Qwen3VLForConditionalGeneration", "qwen3-vl"),
        ("LucidQwen3VLForConditionalGeneration", "qwen3-vl"),  # the hooked name maps back
    ],
)
def test_every_family_has_one_adapter(arch: str, family: str) -> None:
    from decoding.engine import families
    from decoding.reference.families import reference_family

    served = families.family_for({"architectures": [arch]})
    assert served.name == family
    if not arch.startswith("Lucid"):  # the reference reads the checkpoint's own config
        assert reference_family({"architectures": [arch]}).model.name == family
    # DAMRO is refused (never approximated) where the tower has no [CLS] row (SigLIP, the
    # Qwen ViTs); LLaVA-NeXT scores each image's base tile.
    assert ("damro" in served.undefined) == (family != "llava-next")
    assert (served.vision_attention is None) == (family != "llava-next")


def test_strategies_on_an_unsupported_architecture_fail_at_start_up(tmp_path) -> None:  # noqa: ANN001
    from decoding.engine import families, frontend

    listed = "supported families: llava-1.5 .*llava-next.*llava-onevision.*qwen2.5-vl.*qwen3-vl"
    with pytest.raises(families.UnsupportedModel, match=listed):
        families.family_for({"architectures": ["PaliGemmaForConditionalGeneration"]})
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"})
    )
    args = frontend.make_parser("t").parse_args(["--model", str(tmp_path)])
    with pytest.raises(frontend.DeploymentError, match="Qwen2ForCausalLM.*--strategies none"):
        frontend.configure_strategies(args, ["none", "vcd"])
    plain = frontend.make_parser("t").parse_args(["--model", str(tmp_path)])
    assert frontend.configure_strategies(plain, ["none"]) == []  # any model vLLM serves


def test_a_deployment_refuses_what_its_model_cannot_serve(tmp_path) -> None:  # noqa: ANN001
    """Qwen2.5-VL-7B's config (no weights needed): DAMRO is undefined on the family and
    VAR is uncalibrated (no published sink dimensions); both become 400s with reasons."""
    from decoding.engine import frontend

    config = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "image_token_id": 151655,
        "text_config": {"model_type": "qwen2_5_vl_text", "hidden_size": 3584,
                        "num_hidden_layers": 28},
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    args = frontend.make_parser("t").parse_args(["--model", str(tmp_path)])
    frontend.configure_strategies(args, ["none", "vcd", "damro", "var"])
    assert args.model_family == "qwen2.5-vl" and args.mm_device_do_normalize is False
    refused = frontend.unavailable_strategies(args, ["none", "vcd", "damro", "var"])
    assert set(refused) == {"damro", "var"}
    assert "no [CLS] token" in refused["damro"]
    assert "python -m decoding.profiles.calibrate" in refused["var"]
