"""Offline tests of the Kubernetes manifests: no cluster, no client, no network.

Every rendered object is validated with ``kubernetes_validate`` (strict: unknown fields are
errors) against the real OpenAPI schemas of Kubernetes 1.29 (oldest with every field used
here) and the newest version the package ships. Also: quoting of hostile strings, Kubernetes'
``$(VAR)`` expansion, DNS-1123 names and option errors.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from backends.kubernetes import manifests as km
from backends.kubernetes.backend import KubernetesBackend
from backends.kubernetes.options import KubernetesOptions, is_dns_label
from fakes.k8s import expand_k8s_vars, semantic_errors
from runner.run.backend import job_name
from runner.errors import UsageError
from runner.records import Launch

kubernetes_validate = pytest.importorskip("kubernetes_validate")
REPO = Path(__file__).resolve().parents[2]
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
HOSTILE_IDS = [
    "specs/a.yaml::x; rm -rf / #",
    "specs/a.yaml::$(touch /tmp/pwned) `id` $HOME ${PATH}",
    "specs/a.yaml::'quoted' \"double\" \\ back\nnewline: {yaml: [flow]} &anchor *ref !tag",
    "specs/a.yaml::" + "very-long-name-" * 10,
    "specs/a.yaml::123-starts-with-digit",
    "specs/a.yaml::ÜNÏCÖDÉ 名前",
    "specs/a.yaml::---",
]


def launch_for(case_id: str = "specs/a.yaml::case", *, nodes: int = 2, nproc: int = 4, gpus: int = 0,
               results_dir: str = "/results/run-1/case/main", env: dict[str, str] | None = None,
               timeout: float = 300.5) -> Launch:
    return Launch(case_id=case_id, name="main", kind="script", entry="m:f", args={}, nodes=nodes,
                  nproc_per_node=nproc, gpus_per_node=gpus, env=env or {"OMP_NUM_THREADS": "1"},
                  timeout=timeout, results_dir=results_dir, job_name=job_name(case_id, "main"))


def docs(rendered_text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(rendered_text) if d is not None]


def assert_valid(objects: list[dict]) -> None:
    for obj in objects:
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        assert semantic_errors(obj, obj["kind"]) == [], obj["metadata"]["name"]


FULL_OPTS = {"image": "ghcr.example/team/trainer:1.2@sha256:" + "a" * 64, "namespace": "ml-tests",
             "pvc": "results-rwx", "results_mount": "/results", "service_account": "runner",
             "node_selector": "nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3,pool=train",
             "tolerations": "nvidia.com/gpu:NoSchedule,dedicated=ml:NoExecute,spot",
             "python": "/opt/venv/bin/python", "rdzv_port": "29411", "image_pull_policy": "IfNotPresent",
             "priority_class": "batch-high"}


@pytest.mark.parametrize("opts", [{}, {"image": "img"}, FULL_OPTS], ids=["defaults", "image", "all-options"])
@pytest.mark.parametrize("shape", [(1, 1, 0), (2, 4, 0), (2, 8, 8), (128, 8, 8)], ids=str)
def test_rendered_manifests_are_valid_kubernetes(opts: dict[str, str], shape: tuple[int, int, int]) -> None:
    nodes, nproc, gpus = shape
    launch = launch_for(nodes=nodes, nproc=nproc, gpus=gpus)
    rendered = KubernetesBackend(opts).render(launch)
    objects = docs(rendered.text)
    assert [o["kind"] for o in objects] == ["Service", "Job"]
    assert_valid(objects)
    # the per-object files hold the same objects
    assert docs(rendered.files["service.yaml"]) == objects[:1]
    assert docs(rendered.files["job.yaml"]) == objects[1:]


@pytest.mark.parametrize("case_id", HOSTILE_IDS)
def test_hostile_case_names_give_valid_names_and_quoted_yaml(case_id: str) -> None:
    launch = launch_for(case_id, nodes=16)
    backend = KubernetesBackend({"image": "img"})
    service, job = docs(backend.render(launch).text)
    assert_valid([service, job])
    name = job["metadata"]["name"]
    assert is_dns_label(name) and name[0].isalpha() and service["metadata"]["name"] == name
    assert len(f"{name}-15") <= 63                       # the pods' hostnames
    # the raw id survives only as data (an annotation), byte for byte
    assert job["metadata"]["annotations"][km.CASE_ANNOTATION] == case_id
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--master-addr") + 1] == f"{name}-0.{name}"
    assert all(re.fullmatch(r"[A-Za-z0-9_./=:-]+|\$\(JOB_COMPLETION_INDEX\)", part) for part in command), command


def test_job_and_service_structure() -> None:
    launch = launch_for(nodes=4, nproc=8, gpus=8, timeout=120.2)
    service, job = docs(KubernetesBackend(FULL_OPTS).render(launch).text)
    spec = job["spec"]
    name = job["metadata"]["name"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 4)
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 121
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert rules[1]["action"] == "FailJob" and rules[1]["onExitCodes"]["operator"] == "NotIn"
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["subdomain"] == service["metadata"]["name"] == name
    # the Service selects exactly the Job's pods
    sel = service["spec"]["selector"]
    assert all(spec["template"]["metadata"]["labels"][k] == v for k, v in sel.items())
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    (c,) = pod["containers"]
    assert c["resources"]["limits"] == {"nvidia.com/gpu": 8}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    assert {"name": "results", "mountPath": "/results"} in c["volumeMounts"]
    assert {"name": "results", "persistentVolumeClaim": {"claimName": "results-rwx"}} in pod["volumes"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "pool": "train"}
    assert {"key": "spot", "operator": "Exists"} in pod["tolerations"]
    assert pod["serviceAccountName"] == "runner" and pod["priorityClassName"] == "batch-high"
    argv = [expand_k8s_vars(a, {"JOB_COMPLETION_INDEX": "3"}) for a in c["command"]]
    assert argv == ["/opt/venv/bin/python", "-m", "torch.distributed.run", "--nnodes", "4",
                    "--nproc-per-node", "8", "--node-rank", "3", "--rdzv-backend", "static",
                    "--master-addr", f"{name}-0.{name}", "--master-port", "29411",
                    "--rdzv-conf", "timeout=121", "--max-restarts", "0",
                    "-m", "runner.worker", "/results/run-1/case/main/launch.json"]


def test_cpu_launch_has_no_gpu_limits_and_no_pvc_by_default() -> None:
    _, job = docs(KubernetesBackend({"image": "img"}).render(launch_for(gpus=0)).text)
    pod = job["spec"]["template"]["spec"]
    assert "resources" not in pod["containers"][0]
    assert [v["name"] for v in pod["volumes"]] == ["dshm"]


def test_dollar_strings_survive_kubernetes_expansion() -> None:
    """Kubernetes expands $(VAR) in command and env values: literals must come out unchanged."""
    nasty = "/tmp/$(HOME)/$$x/$JOB/`id`/case/main"
    env = {"A": "$(JOB_COMPLETION_INDEX) and $$ and $(PATH)", "B": "x; rm -rf /"}
    launch = launch_for(results_dir=nasty, env=env)
    _, job = docs(KubernetesBackend({"image": "img"}).render(launch).text)
    c = job["spec"]["template"]["spec"]["containers"][0]
    declared = {"JOB_COMPLETION_INDEX": "0", "PATH": "/bin", "HOME": "/root"}
    assert expand_k8s_vars(c["command"][-1], declared) == nasty + "/launch.json"
    values = {e["name"]: expand_k8s_vars(e["value"], declared) for e in c["env"] if "value" in e}
    assert values["A"] == env["A"] and values["B"] == env["B"]


def test_expansion_rules_match_kubernetes() -> None:
    env = {"A": "1"}
    assert expand_k8s_vars("$(A)", env) == "1"
    assert expand_k8s_vars("$$(A)", env) == "$(A)"
    assert expand_k8s_vars("$(B)", env) == "$(B)"
    assert expand_k8s_vars("$A $", env) == "$A $"
    assert expand_k8s_vars("$$$(A)", env) == "$1"


def test_validator_rejects_a_broken_manifest() -> None:
    """The schema check is real: a typo or a wrong type fails it."""
    _, job = docs(KubernetesBackend({"image": "img"}).render(launch_for()).text)
    job["spec"]["completionsMode"] = job["spec"].pop("completionMode")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, VERSIONS[-1], strict=True)
    _, job = docs(KubernetesBackend({"image": "img"}).render(launch_for()).text)
    job["spec"]["parallelism"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, VERSIONS[-1], strict=True)


def test_names_fit_hostnames_for_many_nodes() -> None:
    long_id = "specs/a.yaml::" + "x" * 200
    for nodes in (1, 10, 1000):
        launch = launch_for(long_id, nodes=nodes)
        for suffix in ("abcde", "abcde-12"):
            name = km.object_name(launch, suffix)
            assert is_dns_label(name) and len(f"{name}-{nodes - 1}") <= 63 and name.endswith(suffix)


def test_render_is_stable_and_resubmissions_get_new_names() -> None:
    backend = KubernetesBackend({"image": "img"})
    launch = launch_for()
    assert backend.render(launch).text == backend.render(launch).text
    first = backend._name(launch, 1)
    assert backend._name(launch, 2) != first and backend._name(launch, 2).startswith(first)
    assert KubernetesBackend({"image": "img"})._name(launch, 1) != first   # another session


@pytest.mark.parametrize("key,value", [
    ("namespace", "Bad_NS"), ("rdzv_port", "0"), ("rdzv_port", "http"), ("node_selector", "novalue"),
    ("node_selector", "k=bad value"), ("tolerations", "k:Sometimes"), ("image_pull_policy", "Sometimes"),
    ("results_mount", "relative/path"), ("pvc", "UPPER"), ("python", "python -c evil"),
    ("pending_timeout", "-1"), ("image", "has space"),
])
def test_bad_option_values_are_usage_errors_naming_the_option(key: str, value: str) -> None:
    with pytest.raises(UsageError, match=f"'{key}'"):
        KubernetesBackend({key: value, **({"image": "img"} if key != "image" else {})}).render(launch_for())


def test_unknown_option_suggests_the_known_one() -> None:
    with pytest.raises(UsageError, match="did you mean 'namespace'"):
        KubernetesBackend({"namespce": "x"}).check()


def test_every_option_is_documented_and_parsed() -> None:
    from backends.option_values import POOL_OPTION_HELP

    # the warm-pool options are parsed together into one field, ``pools``
    fields = {f for f in KubernetesOptions.__dataclass_fields__} - {"pools"} | set(POOL_OPTION_HELP)
    assert set(KubernetesBackend.options) == fields


def test_pool_options_of_the_kubernetes_backend() -> None:
    from runner.run.pooling import PoolingBackend

    backend = KubernetesBackend({"pools": "3", "pool_time": "600"})
    wrapped = backend.pooled(lambda launch: True)
    assert isinstance(wrapped, PoolingBackend) and wrapped.id == "kubernetes"
    assert (wrapped.settings.per_shape, wrapped.settings.time_cap, wrapped.settings.idle_poll_s) == (3, 600.0, 1.0)
    off = KubernetesBackend({"pools": "0"})
    assert off.pooled(lambda launch: True) is off
    with pytest.raises(UsageError, match="kubernetes backend: option 'pool_time': -5 must be > 0"):
        KubernetesBackend({"pool_time": "-5"}).check()


def test_results_dir_outside_the_mount_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="results_mount"):
        KubernetesBackend({"image": "img", "pvc": "r", "results_mount": "/elsewhere"}).render(launch_for())


def test_bad_env_name_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="env name"):
        KubernetesBackend({"image": "img"}).render(launch_for(env={"BAD NAME": "1"}))


def test_submit_without_image_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="image"):
        KubernetesBackend({}).submit(launch_for())


def test_module_imports_and_renders_without_the_kubernetes_package() -> None:
    code = ("import sys; sys.modules['kubernetes'] = None\n"
            "from backends.kubernetes.backend import KubernetesBackend\n"
            "from runner.records import Launch\n"
            "l = Launch('c::x', 'main', 'k', 'm:f', {}, 1, 1, 0, {}, 10.0, '/r/c/main', 'x-main')\n"
            "print(KubernetesBackend({'image': 'i'}).render(l).text.count('kind: Job'))\n"
            "try:\n"
            "    KubernetesBackend({'image': 'i'}).submit(l)\n"
            "except Exception as e:\n"
            "    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "1"
    assert lines[1].startswith("UsageError") and "'kubernetes' Python package" in lines[1]


def test_cli_dry_run_prints_valid_manifests(tmp_path: Path) -> None:
    """``runner run --backend kubernetes --dry-run`` prints YAML that passes schema validation."""
    (tmp_path / "s.py").write_text("print('hi')\n")
    spec = tmp_path / "k8s.yaml"
    spec.write_text(json.dumps({"cases": [
        {"name": "two nodes; $(touch PWNED) `id`", "kind": "script", "timeout": 90,
         "resources": {"nodes": 2, "nproc_per_node": 2}, "args": {"script": "s.py", "metrics": "none"}},
        {"name": "one_node", "kind": "script", "args": {"script": "s.py", "metrics": "none"}},
    ]}))
    proc = subprocess.run([sys.executable, "-m", "runner", "run", str(spec), "--backend", "kubernetes",
                           "--backend-opt", "image=img:1", "--dry-run", "--results-dir", str(tmp_path / "r")],
                          cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the whole output is one YAML stream: the CLI's headers and summary are comments
    objects = docs(proc.stdout)
    assert [o["kind"] for o in objects] == ["Service", "Job", "Service", "Job"]
    assert_valid(objects)
    assert not list(tmp_path.rglob("PWNED"))
