#!/usr/bin/env bash
# Submit a Lightman training run to a running Ray cluster.
#   deploy/submit.sh CONFIG OUT [key=value ...]
#   RAY_ADDRESS=http://head:8265 deploy/submit.sh configs/cluster_gpu.yaml runs/lightman-gpu workers=4
# Builds the project wheel (the nodes install it: an editable install does not reach
# them), then `ray job submit` with the repo as working dir and deploy/runtime_env.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:?usage: deploy/submit.sh CONFIG OUT [key=value ...]}
out=${2:?usage: deploy/submit.sh CONFIG OUT [key=value ...]}
shift 2
python3 -m pip wheel --no-deps -q -w dist .
exec ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" \
  --working-dir . --runtime-env deploy/runtime_env.yaml \
  -- lightman train --config "$config" --out "$out" "$@"
