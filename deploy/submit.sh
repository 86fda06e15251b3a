#!/usr/bin/env bash
# Submit a Lightman training run to a running Ray cluster and follow its log.
#   deploy/submit.sh CONFIG OUT [key=value ...]
#   RAY_ADDRESS=http://head:8265 deploy/submit.sh configs/train/cluster_gpu.yaml s3://my-bucket/lightman/out workers=4
# CONFIG: a training config (configs/train/*.yaml, or any file: it is shipped too). OUT: where
# the driver writes results.json and best.pt: an s3:// URI, or a folder on the head node
# (a relative OUT lands in the job's temporary working dir, which Ray deletes).
# The cluster's token (Ray's token authentication) is read as by any Ray command: the
# RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH variable, else ~/.ray/auth_token, with
# RAY_AUTH_MODE=token (deploy/cluster.yaml and deploy/raycluster.yaml say how to get it).
#
# What reaches the cluster is only what `ray job submit` uploads: a working dir holding
# configs/, tune_spaces/, the config if it lies elsewhere, and this checkout built as a
# wheel, which Ray pip-installs on every node of the job (deploy/runtime_env.yaml says
# how); not the rest of the repo (its data/, runs/ or .venv/).
set -euo pipefail
usage="usage: deploy/submit.sh CONFIG OUT [key=value ...]"
config=${1:?$usage}
out=${2:?$usage}
shift 2
[[ -f $config ]] || { echo "deploy/submit.sh: no config file $config" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/.." && pwd)
config=$(cd "$(dirname "$config")" && pwd)/$(basename "$config")

stage=$(mktemp -d "${TMPDIR:-/tmp}/lightman-submit.XXXXXX")
trap 'rm -rf "$stage"' EXIT
job=$stage/job                      # the working dir `ray job submit` uploads
mkdir -p "$job"
cp -R "$repo/configs" "$repo/tune_spaces" "$job/"
if [[ $config == "$repo/configs/"* ]]; then
  job_config=configs/${config#"$repo/configs/"}
else
  mkdir -p "$job/submitted"
  cp "$config" "$job/submitted/"
  job_config=submitted/$(basename "$config")
fi

python3 -m pip wheel --no-deps -q -w "$stage/wheel" "$repo"
wheel=$(cd "$stage/wheel" && ls lightman-*.whl)
# The wheel goes under a folder named by its content hash: Ray keys the virtualenv it
# builds for `pip` by the text of that field and keeps unused ones in a cache, so a
# rebuilt wheel at an unchanged path could run in the virtualenv of an older one.
digest=$(python3 -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest()[:16])' "$stage/wheel/$wheel")
mkdir -p "$job/wheels/$digest"
cp "$stage/wheel/$wheel" "$job/wheels/$digest/"
sed "s|/WHEEL\$|/wheels/$digest/$wheel|" "$repo/deploy/runtime_env.yaml" > "$stage/runtime_env.yaml"

ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" \
  --working-dir "$job" --runtime-env "$stage/runtime_env.yaml" \
  -- lightman train --config "$job_config" --out "$out" "$@"
