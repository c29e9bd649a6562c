"""The Helm chart (deploy/helm/lucid): renders, lints, validates, and keeps its promises."""

from __future__ import annotations

import base64
import copy
import json
import math
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

ROOT = Path(__file__).resolve().parents[1]


from decoding.strategies import available  # noqa: E402
from tests.helm_scripts import load as _load  # noqa: E402

cc = _load("chartcheck")
ALL_STRATEGIES = available()


def server(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = cc.one(objects, "Deployment")
    return next(
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "server"
    )


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return cc.one(objects, "Deployment")["spec"]["template"]["spec"]


def args_of(values: dict[str, Any]) -> list[str]:
    return server(cc.render(values))["args"]


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def render_error(values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmError) as info:
        cc.render(values)
    return str(info.value)


@pytest.fixture(scope="module")
def default_objects() -> list[dict[str, Any]]:
    return cc.render({})


# Render, lint, validate ----------------------------------------------------------------------
def test_ci_values_cover_defaults_and_every_optional_object() -> None:
    names = {p.name for p in cc.CI_VALUES}
    assert {"default-values.yaml", "full-keda-values.yaml", "full-hpa-values.yaml"} <= names
    kinds: set[str] = set()
    for path in cc.CI_VALUES:
        kinds |= {o["kind"] for o in cc.render(cc.load_values(path))}
    assert kinds >= {
        "Deployment", "Service", "ServiceAccount", "PersistentVolumeClaim", "Secret",
        "ServiceMonitor", "PodMonitor", "PrometheusRule", "ScaledObject",
        "HorizontalPodAutoscaler", "PodDisruptionBudget", "Ingress", "ConfigMap", "Job", "Pod",
    }  # fmt: skip


@pytest.mark.parametrize("path", cc.CI_VALUES, ids=lambda p: p.name)
def test_values_file_lints_and_every_object_validates(path: Path) -> None:
    assert cc.check_all(cc.load_values(path)) == []


@pytest.mark.parametrize("path", cc.CI_VALUES, ids=lambda p: p.name)
def test_rendered_text_is_tidy(path: Path) -> None:
    for template, text in cc.render_files(cc.load_values(path)).items():
        for number, line in enumerate(text.splitlines(), start=1):
            assert line == line.rstrip(), f"{template}:{number}: trailing whitespace"


def test_strict_validation_catches_unknown_fields() -> None:
    problems = cc.check_all({"extraEnv": [{"name": "X", "valu": "1"}]}, versions=["1.29.0"])
    assert any("'valu' was unexpected" in p for p in problems)


def test_lint_reports_schema_violations() -> None:
    assert any("strategies" in p for p in cc.lint({"strategies": {"enabled": ["halc"]}}))


def test_every_object_has_standard_labels() -> None:
    for path in cc.CI_VALUES:
        for obj in cc.render(cc.load_values(path)):
            labels = obj["metadata"].get("labels", {})
            if obj["metadata"]["name"].endswith("-extra"):
                continue  # user-supplied extraObjects keep their own metadata
            for key in ("name", "instance", "version", "managed-by", "part-of"):
                assert f"app.kubernetes.io/{key}" in labels, (obj["kind"], key)
            assert labels["app.kubernetes.io/instance"] == cc.RELEASE


# GPU, probes, volumes, security ---------------------------------------------------------------
def test_gpu_requested_and_limited(default_objects: list[dict[str, Any]]) -> None:
    res = server(default_objects)["resources"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == "1"
    tp2 = {"gpu": {"count": 2}, "engine": {"tensorParallelSize": 2}}
    # Tensor parallelism with the strategies whose hooks are correct on a shard.
    tp2["strategies"] = {"enabled": ["none", "vcd", "var"]}
    res = server(cc.render(tp2))["resources"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == "2"


def test_gpu_node_placement(default_objects: list[dict[str, Any]]) -> None:
    spec = pod_spec(default_objects)
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert "runtimeClassName" not in spec and "affinity" not in spec
    spec = pod_spec(
        cc.render({"gpu": {"products": ["NVIDIA-H100-80GB-HBM3"], "runtimeClassName": "nvidia"}})
    )
    assert spec["runtimeClassName"] == "nvidia"
    term = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    expr = term["nodeSelectorTerms"][0]["matchExpressions"][0]
    assert expr == {
        "key": "nvidia.com/gpu.product",
        "operator": "In",
        "values": ["NVIDIA-H100-80GB-HBM3"],
    }


def test_tensor_parallel_needs_enough_gpus() -> None:
    assert "tensorParallelSize=2" in render_error({"engine": {"tensorParallelSize": 2}})


def test_probes_on_health_with_generous_startup(default_objects: list[dict[str, Any]]) -> None:
    c = server(default_objects)
    port_names = {p["name"] for p in c["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
        assert c[probe]["httpGet"]["port"] in port_names
    startup = c["startupProbe"]
    budget = startup["initialDelaySeconds"] + startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= 600  # >= 10 minutes for a 7B VLM (load, compile, CUDA graph capture)


def test_shm_is_a_sized_memory_emptydir(default_objects: list[dict[str, Any]]) -> None:
    volumes = {v["name"]: v for v in pod_spec(default_objects)["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in server(default_objects)["volumeMounts"]}
    shm = volumes[mounts["/dev/shm"]]["emptyDir"]
    assert shm["medium"] == "Memory" and shm["sizeLimit"] == "8Gi"


def test_model_cache_on_pvc_with_hf_home(default_objects: list[dict[str, Any]]) -> None:
    pvc = cc.one(default_objects, "PersistentVolumeClaim")
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    volumes = {v["name"]: v for v in pod_spec(default_objects)["volumes"]}
    claim = volumes["model-cache"]["persistentVolumeClaim"]["claimName"]
    assert claim == pvc["metadata"]["name"]
    c = server(default_objects)
    env = {e["name"]: e.get("value") for e in c["env"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert env["HF_HOME"] == mounts["model-cache"] == "/models"
    init = pod_spec(default_objects)["initContainers"][0]
    assert init["command"][:3] == ["hf", "download", "llava-hf/llava-1.5-7b-hf"]
    assert env["HF_HUB_OFFLINE"] == "1"
    objects = cc.render({"modelCache": {"persistence": {"existingClaim": "weights"}}})
    assert not cc.find(objects, "PersistentVolumeClaim")
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "weights"}} in pod_spec(
        objects
    )["volumes"]


def test_hf_token_from_secret() -> None:
    objects = cc.render({"hfToken": {"existingSecret": "hf", "secretKey": "tok"}})
    assert not cc.find(objects, "Secret")
    for container in [server(objects), pod_spec(objects)["initContainers"][0]]:
        ref = next(e for e in container["env"] if e["name"] == "HF_TOKEN")["valueFrom"]
        assert ref == {"secretKeyRef": {"name": "hf", "key": "tok"}}
    objects = cc.render({"hfToken": {"value": "hf_abc"}})
    secret = cc.one(objects, "Secret")
    assert base64.b64decode(secret["data"]["token"]).decode() == "hf_abc"
    ref = next(e for e in server(objects)["env"] if e["name"] == "HF_TOKEN")["valueFrom"]
    assert ref["secretKeyRef"]["name"] == secret["metadata"]["name"]
    assert "not both" in render_error({"hfToken": {"value": "a", "existingSecret": "b"}})
    env = {e["name"] for e in server(cc.render({}))["env"]}
    assert "HF_TOKEN" not in env


def test_pod_hardening(default_objects: list[dict[str, Any]]) -> None:
    spec = pod_spec(default_objects)
    assert spec["enableServiceLinks"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 1000
    assert spec["automountServiceAccountToken"] is False
    sc = server(default_objects)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]


def test_service_targets_the_server_pods(default_objects: list[dict[str, Any]]) -> None:
    service = cc.one(default_objects, "Service")
    pod_labels = cc.one(default_objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels[k] == v for k, v in service["spec"]["selector"].items())
    assert service["spec"]["ports"][0]["targetPort"] in {
        p["name"] for p in server(default_objects)["ports"]
    }


def test_escape_hatches() -> None:
    objects = cc.render(cc.load_values(cc.CHART / "ci" / "full-keda-values.yaml"))
    c = server(objects)
    assert {"name": "VLLM_LOGGING_LEVEL", "value": "INFO"} in c["env"]
    assert {"name": "scratch", "mountPath": "/scratch"} in c["volumeMounts"]
    assert {"name": "scratch", "emptyDir": {}} in pod_spec(objects)["volumes"]
    extra = [o for o in cc.find(objects, "ConfigMap") if o["metadata"]["name"] == "demo-extra"]
    assert extra and extra[0]["data"]["note"] == "rendered through tpl"
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: '{{ .Release.Name }}-as-text'\n"
    objects = cc.render({"extraObjects": [text]})
    assert any(o["metadata"]["name"] == "demo-as-text" for o in cc.find(objects, "ConfigMap"))


# Strategies and the engine flags they need ----------------------------------------------------
def test_server_arguments(default_objects: list[dict[str, Any]]) -> None:
    args = server(default_objects)["args"]
    assert flag(args, "--model") == "llava-hf/llava-1.5-7b-hf"
    assert flag(args, "--port") == "8000" and flag(args, "--host") == "0.0.0.0"
    assert flag(args, "--strategies") == ",".join(ALL_STRATEGIES)
    assert flag(args, "--disable-access-log-for-endpoints") == "/health,/metrics"
    assert "--speculative-config" not in args and "--no-enable-prefix-caching" not in args


def _chart_graphs(args: list[str]) -> str:
    if "--enforce-eager" in args:
        return "NONE"
    return json.loads(flag(args, "--compilation-config") or "{}").get("cudagraph_mode", "FULL")


def _server_outcome(enabled: list[str], argv: list[str], monkeypatch) -> str:  # noqa: ANN001
    """What the server's start-up makes of a GPU deployment: its graph mode or 'refused'."""
    from decoding.engine import frontend

    monkeypatch.setattr(frontend, "is_cpu", lambda: False)
    args = frontend.make_parser("test").parse_args(["--model", "m", *argv])
    try:
        frontend.configure_strategies(args, enabled)
    except frontend.DeploymentError:
        return "refused"
    return "NONE" if args.enforce_eager else (frontend._cudagraph_mode(args) or "FULL")


def _chart_outcome(values: dict[str, Any]) -> str:
    try:
        return _chart_graphs(args_of(values))
    except helm.HelmError:
        return "refused"


CHART_CASES = [
    ({}, []),
    ({"engine": {"speculativeConfig": {"method": "ngram"}}}, ["-sc", '{"method": "ngram"}']),
    ({"engine": {"prefixCaching": False}}, ["--no-enable-prefix-caching"]),
    ({"engine": {"tensorParallelSize": 2}, "gpu": {"count": 2}}, ["--tensor-parallel-size", "2"]),
    ({"engine": {"cudagraphMode": "FULL"}}, ["-cc", '{"cudagraph_mode": "FULL"}']),
    ({"engine": {"cudagraphMode": "PIECEWISE"}}, ["-cc", '{"cudagraph_mode": "PIECEWISE"}']),
]  # fmt: skip


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
@pytest.mark.parametrize(("values", "argv"), CHART_CASES)
def test_chart_and_server_apply_the_same_engine_rules(
    strategy, values, argv, monkeypatch, llava_family
) -> None:  # noqa: ANN001
    """One source of rules (the declarations): for each strategy and each engine setting the
    chart and the server both refuse the deployment or pick the same CUDA-graph mode."""
    enabled = sorted({"none", strategy}, key=ALL_STRATEGIES.index)
    chart = _chart_outcome({**values, "strategies": {"enabled": enabled}})
    assert chart == _server_outcome(enabled, argv, monkeypatch)


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_strategies_keep_compilation_and_cuda_graphs(strategy: str) -> None:
    args = args_of({"strategies": {"enabled": sorted({"none", strategy})}})
    assert "--compilation-config" not in args and "--enforce-eager" not in args


def test_enforce_eager_replaces_compilation_config() -> None:
    args = args_of({"engine": {"enforceEager": True}})
    assert "--enforce-eager" in args and "--compilation-config" not in args


@pytest.mark.parametrize("mode", ["FULL", "FULL_DECODE_ONLY", "FULL_AND_PIECEWISE"])
def test_every_cuda_graph_mode_is_accepted_with_every_strategy(mode: str) -> None:
    args = args_of({"engine": {"cudagraphMode": mode}})
    assert json.loads(flag(args, "--compilation-config") or "{}") == {"cudagraph_mode": mode}
    args = args_of({"engine": {"cudagraphMode": mode, "enforceEager": True}})
    assert "--enforce-eager" in args


def test_speculative_decoding_only_with_plain_decoding() -> None:
    spec = {"method": "ngram", "num_speculative_tokens": 4}
    message = render_error(
        {"engine": {"speculativeConfig": spec}, "strategies": {"enabled": ["none", "vcd"]}}
    )
    assert "speculative" in message and "vcd" in message
    args = args_of({"engine": {"speculativeConfig": spec}, "strategies": {"enabled": ["none"]}})
    assert json.loads(flag(args, "--speculative-config") or "{}") == spec


def test_opera_needs_prefix_caching() -> None:
    assert "opera need prefix caching" in render_error({"engine": {"prefixCaching": False}})
    args = args_of({"engine": {"prefixCaching": False}, "strategies": {"enabled": ["none", "vcd"]}})
    assert "--no-enable-prefix-caching" in args


@pytest.mark.parametrize(
    "arg",
    [
        "--enforce-eager",
        "--compilation-config={}",
        "-cc.cudagraph_mode=FULL",
        "-O3",
        "--speculative-config",
        "--no-enable-prefix-caching",
        "--model=other",
        "--strategies",
        "--shutdown-timeout=5",
    ],
)
def test_managed_flags_refused_in_extra_args(arg: str) -> None:
    assert "managed by the chart" in render_error({"engine": {"extraArgs": [arg]}})


def test_unmanaged_extra_args_pass_through() -> None:
    args = args_of(
        {"engine": {"extraArgs": ["--model-impl", "vllm", "--limit-mm-per-prompt", '{"image": 1}']}}
    )
    assert args[-4:] == ["--model-impl", "vllm", "--limit-mm-per-prompt", '{"image": 1}']


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"strategies": {"enabled": ["none", "halc"]}}, "/strategies/enabled/1"),
        ({"strategies": {"enabled": []}}, "/strategies/enabled"),
        ({"strategies": {"enabled": ["vcd", "vcd"]}}, "/strategies/enabled"),
        ({"strategies": {"enabled": "none,vcd"}}, "/strategies/enabled"),
        ({"strategies": {"costFactor": {"opera": 0.5}}}, "/strategies/costFactor/opera"),
        ({"engine": {"cudagraphMode": "full"}}, "/engine/cudagraphMode"),
        ({"engine": {"gpuMemoryUtilization": 1.5}}, "/engine/gpuMemoryUtilization"),
        ({"gpu": {"count": 0}}, "/gpu/count"),
        ({"enigne": {}}, "enigne"),
        (
            {"benchmark": {"runs": [{"name": "Bad Name", "command": ["x"]}]}},
            "/benchmark/runs/0/name",
        ),
    ],
)
def test_schema_rejects(values: dict[str, Any], needle: str) -> None:
    with pytest.raises(helm.HelmValuesError) as info:
        cc.render(values)
    assert needle in str(info.value)


def test_schema_accepts_every_strategy_subset_shape() -> None:
    with helm.Chart.load(cc.CHART) as chart:
        chart.validate_schema({"strategies": {"enabled": ["opera"]}})
        chart.validate_schema({"strategies": {"enabled": list(reversed(ALL_STRATEGIES))}})


# Drain sized from the slowest strategy --------------------------------------------------------
@pytest.mark.parametrize(
    ("enabled", "factor"),
    [(ALL_STRATEGIES, 30), (["none"], 1), (["none", "vcd", "damro"], 2), (["none", "var"], 1.5)],
)
def test_grace_period_follows_slowest_strategy(enabled: list[str], factor: float) -> None:
    values = {"strategies": {"enabled": enabled}, "drain": {"maxRequestSeconds": 61}}
    objects = cc.render(values)
    drain = math.ceil(61 * factor)
    assert pod_spec(objects)["terminationGracePeriodSeconds"] == 15 + drain + 30
    assert flag(server(objects)["args"], "--shutdown-timeout") == str(drain)
    assert server(objects)["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "15"]
    assert f"in-flight\nrequests get {drain} s" in cc.notes(values)


def test_grace_period_override_and_no_shutdown_flag() -> None:
    objects = cc.render(
        {"drain": {"terminationGracePeriodSeconds": 99, "passShutdownTimeout": False}}
    )
    assert pod_spec(objects)["terminationGracePeriodSeconds"] == 99
    assert "--shutdown-timeout" not in server(objects)["args"]


def test_cost_factor_tunes_the_drain() -> None:
    objects = cc.render({"strategies": {"costFactor": {"opera": 10}}})
    assert pod_spec(objects)["terminationGracePeriodSeconds"] == 15 + 600 + 30


# Optional objects -----------------------------------------------------------------------------
def test_optional_objects_off_by_default(default_objects: list[dict[str, Any]]) -> None:
    kinds = {o["kind"] for o in default_objects}
    assert kinds == {"Deployment", "Service", "ServiceAccount", "PersistentVolumeClaim", "Pod"}


def test_autoscalers_and_monitors_are_exclusive() -> None:
    on = {"enabled": True}
    assert "enable one" in render_error({"autoscaling": {"keda": on, "hpa": on}})
    assert "enable one" in render_error({"metrics": {"serviceMonitor": on, "podMonitor": on}})


def test_autoscaled_deployment_leaves_replicas_to_the_autoscaler() -> None:
    objects = cc.render({"autoscaling": {"keda": {"enabled": True}}})
    assert "replicas" not in cc.one(objects, "Deployment")["spec"]
    scaled = cc.one(objects, "ScaledObject")
    trigger = scaled["spec"]["triggers"][0]
    assert cc.promql_metrics(trigger["metadata"]["query"]) == {"vllm:num_requests_waiting"}
    assert scaled["spec"]["cooldownPeriod"] >= 300
    objects = cc.render({"autoscaling": {"hpa": {"enabled": True}}})
    hpa = cc.one(objects, "HorizontalPodAutoscaler")
    assert (
        hpa["spec"]["scaleTargetRef"]["name"] == cc.one(objects, "Deployment")["metadata"]["name"]
    )


def test_pdb_and_ingress() -> None:
    objects = cc.render({"podDisruptionBudget": {"enabled": True}, "ingress": {"enabled": True}})
    pdb = cc.one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    pod_labels = cc.one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels[k] == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())
    backend = cc.one(objects, "Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]
    assert backend["service"] == {"name": "demo-lucid", "port": {"name": "http"}}


def test_dashboard_configmap_carries_the_dashboard() -> None:
    objects = cc.render({"metrics": {"dashboard": {"enabled": True}}})
    cm = next(
        o for o in cc.find(objects, "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")
    )
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["lucid.json"]) == json.loads(cc.DASHBOARD.read_text())


def test_benchmark_job_runs_in_order_against_the_service() -> None:
    values = {"benchmark": {"enabled": True}}
    objects = cc.render(values)
    job = cc.one(objects, "Job")
    assert job["metadata"]["name"] == "demo-lucid-bench-r1"
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0
    names = [c["name"] for c in spec["initContainers"]]
    assert names == ["wait-for-server", "run-pope", "run-chair", "run-bench"]
    commands = {c["name"]: c["command"] for c in spec["initContainers"]}
    assert commands["run-pope"][:4] == ["python", "-m", "eval", "pope"]
    assert commands["run-chair"][:4] == ["python", "-m", "eval", "chair"]
    assert commands["run-bench"] == ["make", "-o", "venv", "bench", "URL=$(LUCID_URL)", "PY=python"]
    for container in spec["initContainers"] + spec["containers"]:
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["LUCID_URL"] == "http://demo-lucid.ml.svc:8000"
        assert env["RESULTS_DIR"] == "/results/demo-lucid-bench-r1"
        assert env["BENCH_OUT"] == "/results/demo-lucid-bench-r1/bench.json"
        assert env["COCO_IMAGES"] == "/data/coco/val2014"
        assert {"name": "results", "mountPath": "/results"} in container["volumeMounts"]
    pvc = next(
        o for o in cc.find(objects, "PersistentVolumeClaim") if "bench" in o["metadata"]["name"]
    )
    assert spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert "--all-containers" in cc.notes(values)


def test_benchmark_dataset_claim_is_mounted_read_only() -> None:
    values = {"benchmark": {"enabled": True, "data": {"existingClaim": "coco"}}}
    spec = cc.one(cc.render(values), "Job")["spec"]["template"]["spec"]
    assert {
        "name": "data",
        "persistentVolumeClaim": {"claimName": "coco", "readOnly": True},
    } in spec["volumes"]
    for container in spec["initContainers"]:
        assert {"name": "data", "mountPath": "/data", "readOnly": True} in container["volumeMounts"]


def _expand(command: list[str], env: dict[str, str]) -> list[str]:
    out = []
    for arg in command:
        for name, value in env.items():
            arg = arg.replace(f"$({name})", value)
        assert "$(" not in arg, f"{arg}: variable not defined in the Job's environment"
        out.append(arg)
    return out


def test_default_benchmark_commands_parse() -> None:
    from eval.cli import build_parser

    spec = cc.one(cc.render({"benchmark": {"enabled": True}}), "Job")["spec"]["template"]["spec"]
    for container in spec["initContainers"][1:]:
        env = {e["name"]: e["value"] for e in container["env"]}
        argv = _expand(container["command"], env)
        if argv[:3] == ["python", "-m", "eval"]:
            args = build_parser().parse_args(argv[3:])
            assert args.url == "http://demo-lucid.ml.svc:8000"
            assert args.strategies == ",".join(ALL_STRATEGIES)
            assert str(args.out).startswith(env["RESULTS_DIR"])
        else:
            assert argv[:4] == ["make", "-o", "venv", "bench"]
            makefile = (cc.HERE.parent.parent / "Makefile").read_text()
            assert "\nbench:" in "\n" + makefile and "$(BENCH_OUT)" in makefile


def test_benchmark_job_name_changes_with_revision() -> None:
    with helm.Chart.load(cc.CHART) as chart:
        text = chart.render(
            {"benchmark": {"enabled": True}}, name="demo", namespace="ml", revision=7
        )
    assert "name: demo-lucid-bench-r7" in text["lucid/templates/benchmark-job.yaml"]


def test_benchmark_runs_from_values() -> None:
    runs = [{"name": "smoke", "command": ["python", "-m", "eval", "pope", "--limit", "10"]}]
    values = {"benchmark": {"enabled": True, "runs": runs, "targetUrl": "http://gw:80"}}
    spec = cc.one(cc.render(values), "Job")["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["wait-for-server", "run-smoke"]
    assert {"name": "LUCID_URL", "value": "http://gw:80"} in spec["initContainers"][1]["env"]


def test_rwo_cache_with_replicas_warns() -> None:
    assert "WARNING" in cc.notes({"replicaCount": 2})
    assert "WARNING" not in cc.notes({})
    rwx = {"replicaCount": 2, "modelCache": {"persistence": {"accessModes": ["ReadWriteMany"]}}}
    assert "WARNING" not in cc.notes(rwx)


def test_values_are_not_mutated_by_rendering() -> None:
    values = cc.load_values(cc.CHART / "ci" / "full-hpa-values.yaml")
    before = copy.deepcopy(values)
    cc.render(values)
    assert values == before
