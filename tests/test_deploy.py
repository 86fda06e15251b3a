"""deploy/ applies: every manifest passes the schema of the exact version it targets, and
deploy/submit.sh runs as docs/deployment.md shows it.

- deploy/cluster.yaml goes through what `ray up` runs before it touches a cloud (Ray's
  `prepare_config` and `validate_config`, against the `ray-schema.json` in the ray wheel);
- each KubeRay manifest (RayJob, RayService, RayCluster) is checked against the CRD's
  openAPIV3Schema of the KubeRay release copied into tests/kuberay/ (README there), with
  unknown fields rejected as `kubectl apply`'s strict field validation does; a validator
  that passes everything would prove nothing, so manifests with an unknown field or with
  the old `rayClusterSpec` of a RayService must fail it;
- Ray's token authentication is on in every manifest;
- deploy/submit.sh builds the wheel and submits a tiny 2-worker training to a real
  `ray start --head` (token auth on) whose Python holds Ray but not Lightman, as a
  cluster node whose image lacks the project: the job finds the `lightman` command and
  the config only through what `ray job submit` uploads.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from lightman.platform import generated
from lightman.platform.config import load_config
from lightman.platform.train import TrainConfig

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
import clusters  # noqa: E402
import tiny  # noqa: E402

REPO = Path(__file__).parents[1]
DEPLOY = REPO / "deploy"
KUBERAY = Path(__file__).parent / "kuberay"
KUBERAY_CRDS = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}
# Fields the KubeRay release's Go types mark "Deprecated" that its CRDs still accept, so
# schema validation alone lets them through (ray-operator/apis/ray/v1/rayservice_types.go:
# "This field is not used anymore"; rayjob_types.go: "Use `deletionRules` instead").
KUBERAY_DEPRECATED = {
    "RayService": [
        ("spec", "serviceUnhealthySecondThreshold"),
        ("spec", "deploymentUnhealthySecondThreshold"),
    ],
    "RayJob": [
        ("spec", "deletionStrategy", "onSuccess"),
        ("spec", "deletionStrategy", "onFailure"),
    ],
}
# The deploy/ files that are not KubeRay manifests, each checked by a test of its own.
NOT_KUBERAY = {"cluster.yaml", "runtime_env.yaml", "serve.yaml"}


def _load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _kuberay_manifests() -> list[Path]:
    return sorted(p for p in DEPLOY.glob("*.yaml") if p.name not in NOT_KUBERAY)


def _cluster_spec(manifest: dict) -> dict:
    """The RayClusterSpec of a RayCluster, RayJob or RayService (each names it its way)."""
    spec = manifest["spec"]
    field = {"RayCluster": None, "RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}
    return spec if field[manifest["kind"]] is None else spec[field[manifest["kind"]]]


# --- KubeRay: the CRD's openAPIV3Schema as JSON Schema ------------------------------------


def openapi_to_jsonschema(node):
    """A CRD's structural openAPIV3Schema as a JSON Schema that rejects unknown fields.

    Kubernetes prunes or (with strict field validation, `kubectl apply`'s default)
    rejects a field that the schema does not list, unless the object carries
    `x-kubernetes-preserve-unknown-fields`; JSON Schema allows any field unless told, so
    every object with `properties` gets `additionalProperties: false`. The other
    Kubernetes extensions: `x-kubernetes-int-or-string` is an integer or a string,
    `nullable` admits null; `format` (int32, int64) and the CEL rules of
    `x-kubernetes-validations` are not checked.
    """
    if isinstance(node, list):
        return [openapi_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: openapi_to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            out[key] = openapi_to_jsonschema(value)
        elif key.startswith("x-kubernetes-") or key in ("nullable", "format", "description"):
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def _crd(kind: str) -> dict:
    return _load(KUBERAY / KUBERAY_CRDS[kind])


@cache
def _validator(kind: str, version: str) -> jsonschema.Draft7Validator:
    crd = _crd(kind)
    (schema,) = [
        v["schema"]["openAPIV3Schema"]
        for v in crd["spec"]["versions"]
        if v["name"] == version and v["served"]
    ]
    converted = openapi_to_jsonschema(schema)
    jsonschema.Draft7Validator.check_schema(converted)
    return jsonschema.Draft7Validator(converted)


def _has(tree: dict, path: tuple[str, ...]) -> bool:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


def kuberay_errors(manifest: dict) -> list[str]:
    """What the API server of a cluster running the copied KubeRay release would refuse in
    `manifest` (its CRD's schema, strict fields), and the fields set that the release no
    longer reads, one line each; [] when none."""
    kind = manifest.get("kind")
    if kind not in KUBERAY_CRDS:
        return [f"kind {kind!r} is not one of KubeRay's {sorted(KUBERAY_CRDS)}"]
    crd = _crd(kind)
    group, _, version = str(manifest.get("apiVersion", "")).partition("/")
    served = [v["name"] for v in crd["spec"]["versions"] if v["served"]]
    if group != crd["spec"]["group"] or version not in served:
        return [
            f"apiVersion {manifest.get('apiVersion')!r}: {kind} is served as "
            f"{[crd['spec']['group'] + '/' + v for v in served]}"
        ]
    errors = [
        f"{e.json_path}: {e.message}" for e in _validator(kind, version).iter_errors(manifest)
    ]
    if not isinstance(manifest.get("metadata", {}).get("name"), str):
        errors.append("$.metadata.name: required")
    errors += [
        f"$.{'.'.join(field)}: deprecated, KubeRay no longer reads it"
        for field in KUBERAY_DEPRECATED.get(kind, [])
        if _has(manifest, field)
    ]
    return sorted(errors)


def test_the_kuberay_crd_copies_are_the_ones_the_readme_names():
    """tests/kuberay/README.md names each CRD's source and sha256: a hand edit of a copy
    (which would make the validation below prove something about another schema) fails."""
    readme = (KUBERAY / "README.md").read_text()
    for name in KUBERAY_CRDS.values():
        digest = hashlib.sha256((KUBERAY / name).read_bytes()).hexdigest()
        assert f"{digest}  {name}" in readme, f"{name}: sha256 {digest} not in the README"


@pytest.mark.parametrize("path", _kuberay_manifests(), ids=lambda p: p.name)
def test_each_kuberay_manifest_passes_its_crd_schema_with_unknown_fields_rejected(path):
    assert kuberay_errors(_load(path)) == []


def test_every_deploy_yaml_is_a_kuberay_manifest_or_checked_elsewhere():
    kinds = {p.name: _load(p).get("kind") for p in _kuberay_manifests()}
    assert sorted(kinds.values()) == sorted(KUBERAY_CRDS), kinds


def test_the_validator_rejects_an_unknown_field_and_the_old_ray_cluster_spec():
    service = _load(DEPLOY / "rayservice.yaml")
    assert kuberay_errors(service) == []

    old = json.loads(json.dumps(service))
    old["spec"]["rayClusterSpec"] = old["spec"].pop("rayClusterConfig")
    old["spec"]["serviceUnhealthySecondThreshold"] = 900
    assert kuberay_errors(old) == [
        "$.spec.serviceUnhealthySecondThreshold: deprecated, KubeRay no longer reads it",
        "$.spec: 'rayClusterConfig' is a required property",
        "$.spec: Additional properties are not allowed ('rayClusterSpec' was unexpected)",
    ]

    deep = json.loads(json.dumps(service))  # an unknown field in a pod's container (core/v1)
    deep["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "imagePullSecret"
    ] = "x"
    errors = kuberay_errors(deep)
    assert errors == [
        "$.spec.rayClusterConfig.headGroupSpec.template.spec.containers[0]: Additional "
        "properties are not allowed ('imagePullSecret' was unexpected)"
    ], errors

    job = _load(DEPLOY / "rayjob.yaml")
    wrong_type = json.loads(json.dumps(job))
    wrong_type["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "8"
    assert any("replicas" in e and "not of type 'integer'" in e for e in kuberay_errors(wrong_type))
    bad_enum = json.loads(json.dumps(job))
    bad_enum["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "password"
    assert any("authOptions.mode" in e for e in kuberay_errors(bad_enum))
    assert kuberay_errors({**job, "apiVersion": "ray.io/v1alpha2"})
    missing = json.loads(json.dumps(job))
    del missing["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    assert any("'template' is a required property" in e for e in kuberay_errors(missing))


def test_each_deprecated_field_is_one_the_crd_still_accepts():
    """The deprecated list above matters only while the schema lets those fields through."""
    for kind, fields in KUBERAY_DEPRECATED.items():
        schema = [v for v in _crd(kind)["spec"]["versions"] if v["name"] == "v1"][0]
        node = schema["schema"]["openAPIV3Schema"]
        for field in fields:
            props = node
            for key in field:
                props = props["properties"][key]
            assert props["type"] in ("integer", "string", "object"), (kind, field)


@pytest.mark.parametrize("path", _kuberay_manifests(), ids=lambda p: p.name)
def test_each_kuberay_cluster_has_token_auth_from_a_secret_and_this_ray(path):
    manifest = _load(path)
    cluster = _cluster_spec(manifest)
    # KubeRay sets RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (from the Secret's auth_token
    # key) on every Ray container, the autoscaler's and a RayJob's submitter included
    assert cluster["authOptions"] == {"mode": "token", "secretName": "lightman-ray-token"}
    assert cluster["rayVersion"] == ray.__version__  # token auth needs Ray >= 2.52


def test_the_rayjob_writes_to_s3_with_a_repo_training_config_and_a_valid_runtime_env():
    job = _load(DEPLOY / "rayjob.yaml")
    words = job["spec"]["entrypoint"].split()
    assert words[:2] == ["lightman", "train"]
    out = words[words.index("--out") + 1]
    assert out.startswith("s3://")
    config = words[words.index("--config") + 1]
    image_root = "/opt/lightman/"  # where the image holds configs/ (the manifest's comment)
    assert config.startswith(image_root)
    load_config(TrainConfig, REPO / config.removeprefix(image_root))
    ray.runtime_env.RuntimeEnv(**yaml.safe_load(job["spec"]["runtimeEnvYAML"]))


def test_the_runtime_env_submit_sh_fills_in_is_one_ray_accepts():
    """deploy/submit.sh replaces WHEEL with the wheel's path in the upload; the result
    installs that wheel alone (the nodes hold the dependencies), over any installed copy."""
    text = (DEPLOY / "runtime_env.yaml").read_text()
    assert text.count("/WHEEL\n") == 1
    env = yaml.safe_load(text.replace("/WHEEL\n", "/wheels/0123/lightman-0.1.0-py3-none-any.whl\n"))
    parsed = ray.runtime_env.RuntimeEnv(**env)
    assert parsed["pip"]["packages"] == [
        "${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}/wheels/0123/lightman-0.1.0-py3-none-any.whl"
    ]
    assert {"--no-deps", "--ignore-installed"} <= set(parsed["pip"]["pip_install_options"])
    assert "py_modules" not in env and "working_dir" not in env  # submit.sh gives the upload


# --- Ray cluster launcher ----------------------------------------------------------------


def _launcher_config(config: dict) -> None:
    """What `ray up` checks before it calls the cloud (ray/autoscaler/_private/commands.py)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(json.loads(json.dumps(config))))


def test_cluster_yaml_passes_rays_cluster_schema_and_unknown_fields_fail():
    config = _load(DEPLOY / "cluster.yaml")
    _launcher_config(config)
    with pytest.raises(jsonschema.ValidationError, match="'min_worker' was unexpected"):
        bad = json.loads(json.dumps(config))
        bad["available_node_types"]["gpu_worker"]["min_worker"] = 0
        _launcher_config(bad)
    with pytest.raises(jsonschema.ValidationError, match="'idle_timeout' was unexpected"):
        _launcher_config({**config, "idle_timeout": 10})


def test_cluster_yaml_starts_gpu_workers_at_zero_and_every_node_with_token_auth():
    config = _load(DEPLOY / "cluster.yaml")
    assert config["available_node_types"]["gpu_worker"]["min_workers"] == 0
    # one token, the user's, on every node: the file Ray reads by default
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if c != "ray stop"]
        assert starts and all(c.startswith("RAY_AUTH_MODE=token ray start ") for c in starts)


def test_every_auth_mode_a_deploy_file_sets_is_token():
    """Whatever form it takes (a shell variable, a YAML env var, KubeRay's authOptions),
    no deploy/ file sets Ray's authentication mode to anything but token."""
    found = []
    for path in sorted(DEPLOY.iterdir()):
        text = path.read_text()
        found += [(path.name, m) for m in re.findall(r"RAY_AUTH_MODE\W+(\w+)", text)]
        found += [(path.name, m) for m in re.findall(r"authOptions:\s+mode:\s*(\w+)", text)]
    assert found and {mode for _, mode in found} == {"token"}, found


# --- deploy/submit.sh against a real head ------------------------------------------------


def node_python(root: Path) -> Path:
    """A Python that holds this environment's packages but not Lightman, nor its `lightman`
    command: a virtualenv whose .pth names this one's site-packages as a plain folder.

    Python runs the .pth files only of its own site folders, so the editable install's
    finder (a .pth there) never runs, as on a node whose image lacks the project.
    """
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(root)], check=True)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(root), "platbase": str(root)}))
    (purelib / "node_packages.pth").write_text(sysconfig.get_path("purelib") + "\n")
    python = root / "bin" / "python"
    (root / "bin" / "ray").write_text(
        f"#!{python}\nimport sys\nfrom ray.scripts.scripts import main\nsys.exit(main())\n"
    )
    (root / "bin" / "ray").chmod(0o755)
    check = subprocess.run(
        [str(python), "-c", "import ray, torch, lightman.platform"], capture_output=True, text=True
    )
    assert "No module named 'lightman'" in check.stderr, check.stderr  # and ray, torch import
    return root / "bin"


TINY = [
    *tiny.TASK,
    *tiny.MODEL_32,
    "meta_batch=4",
    "threads=1",
    *tiny.SPLIT,
    "iterations=2",
    "eval_every=2",
    "checkpoint_every=2",
    "val_episodes=4",
    "test_episodes=6",
]


@pytest.mark.slow
@pytest.mark.integration
def test_submit_sh_trains_on_a_head_whose_python_lacks_lightman_with_token_auth(tmp_path):
    """deploy/submit.sh as docs/deployment.md runs it: the wheel built, `ray job submit` to a head
    on 127.0.0.1 with token auth on, a 2-worker training of configs/train/cluster_gpu.yaml (sized
    down by overrides) that finds the `lightman` command and the config only in the upload."""
    # 8 subjects: with 6, no subject split leaves 3 classes of 3 clips in every part
    index = generated.small_index(
        tmp_path / "data",
        [
            "datasets=[casme2,ckplus]",
            "seed=5",
            "casme2.subjects=8",
            "casme2.clips=64",
            "ckplus.subjects=4",
            "ckplus.clips=12",
        ],
    )
    node_bin = node_python(tmp_path / "node")
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    # the node's PATH has no `lightman` (nor this environment's bin/)
    node_env = {**base, **auth, "PATH": f"{node_bin}:/usr/bin:/bin"}
    out = tmp_path / "run"
    with clusters.job_head(node_bin, node_env) as address:
        with pytest.raises(urllib.error.HTTPError) as refused:  # no token: refused
            urllib.request.urlopen(f"{address}/api/jobs/", timeout=30)
        assert refused.value.code == 401

        submitter_bin = Path(sys.executable).parent  # ray and python3 with pip, as a laptop's
        done = subprocess.run(
            [
                str(DEPLOY / "submit.sh"),
                "configs/train/cluster_gpu.yaml",
                str(out),
                f"data.index={index}",
                "device=cpu",
                "workers=2",
                f"storage_path={tmp_path / 'storage'}",
                "max_failures=0",
                *TINY,
            ],
            cwd=REPO,
            env={
                **base,
                **auth,
                "RAY_ADDRESS": address,
                "PATH": f"{submitter_bin}:{os.environ['PATH']}",
            },
            capture_output=True,
            text=True,
            timeout=600,
        )
    log = done.stdout[-4000:] + done.stderr[-3000:]
    assert done.returncode == 0, log
    assert "succeeded" in done.stdout, log
    assert "| lightman | 3-way 1-shot |" in done.stdout, log
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["workers"] == 2
    assert (out / "best.pt").is_file()
    # the run's config is configs/train/cluster_gpu.yaml's, as the upload carried it
    assert results["config"]["run_name"] == "lightman-gpu"
    assert results["config"]["learner"]["lambda_pri"] == 0.55
