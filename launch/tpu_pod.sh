#!/usr/bin/env bash
# Train on a Cloud TPU pod slice (e.g. v5p-64): create the TPU VM, install this repository on every worker, run
# the same `python -m xllava_jax.main` command on every worker (one process per host). No coordinator flags:
# jax.distributed.initialize() finds the other hosts of the slice itself. See README.md, "Multi-host training".
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh [-h] [STEP ...] [-- MAIN_ARGS ...]

Steps (run in the order given; default: setup train):
  create   create the TPU VM (gcloud compute tpus tpu-vm create)
  setup    on every worker: mount BUCKET (if set) with gcsfuse at MOUNT, put the code in REMOTE_DIR (git clone of
           REPO_URL at REPO_REF, or an upload of this checkout when REPO_URL is empty), make the virtual
           environment VENV (Python PYTHON_VERSION, via uv) and pip install -e . plus jax[tpu]
  train    on every worker: python -m xllava_jax.main --config CONFIG --workdir WORKDIR MAIN_ARGS
  logs     the last lines of LOG_FILE on worker 0
  stop     SIGTERM to the training processes started by `train` (they save a checkpoint and stop)
  delete   delete the TPU VM
MAIN_ARGS (after --) go to xllava_jax.main unchanged, e.g. --config.tokenizer=/mnt/gcs/ckpt/vicuna-13b-v1.5

Settings come from the environment (defaults in brackets):
  TPU_NAME [xllava-pod]  ZONE [us-east5-a]  PROJECT [gcloud's default project]
  ACCELERATOR_TYPE [v5p-64]  RUNTIME_VERSION [v2-alpha-tpuv5]  CREATE_FLAGS []
  REPO_URL []  REPO_REF [main]  REMOTE_DIR [xllava-jax]  VENV [xllava-venv]  PYTHON_VERSION [3.12]
  BUCKET [gs://CHANGE-ME; empty: no mount]  MOUNT [/mnt/gcs]  CONFIG [configs/llava15_13b.py:stage2]
  WORKDIR [$MOUNT/workdirs/llava15_13b_s2]  LOG_FILE [xllava-train.log]  DETACH [1]

Example (LLaVA-1.5-13B stage 2 on a new v5p-64, everything under gs://my-bucket):
  BUCKET=gs://my-bucket REPO_URL=https://github.com/ORG/xllava-jax.git launch/tpu_pod.sh create setup train -- \
      --config.init.checkpoint=/mnt/gcs/workdirs/llava15_13b_s1 \
      --config.tokenizer=/mnt/gcs/ckpt/vicuna-13b-v1.5 --config.data.root=/mnt/gcs/data
EOF
}

# ---- settings (each overridable from the environment) -------------------------------------------------------
TPU_NAME=${TPU_NAME:-xllava-pod}                 # name of the TPU VM (the pod slice)
ZONE=${ZONE:-us-east5-a}                         # a zone that offers ACCELERATOR_TYPE
PROJECT=${PROJECT:-}                             # GCP project; empty: gcloud's configured default
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v5p-64}     # slice type for `create` (v5p-64: 32 chips on 8 hosts)
RUNTIME_VERSION=${RUNTIME_VERSION:-v2-alpha-tpuv5}  # TPU software version for `create` (v5p; v6e: v2-alpha-tpuv6e)
CREATE_FLAGS=${CREATE_FLAGS:-}                   # extra flags for `create`, e.g. "--spot" (word-split)
REPO_URL=${REPO_URL:-}                           # git URL to clone on the workers; empty: upload this checkout
REPO_REF=${REPO_REF:-main}                       # branch, tag or commit of REPO_URL to check out
REMOTE_DIR=${REMOTE_DIR:-xllava-jax}             # code directory on each worker (relative paths: to the remote home)
VENV=${VENV:-xllava-venv}                        # virtual environment on each worker (relative paths: to the remote home)
PYTHON_VERSION=${PYTHON_VERSION:-3.12}           # the package needs Python >= 3.11; uv fetches it if the image lacks it
BUCKET=${BUCKET-gs://CHANGE-ME}                  # GCS bucket (gs://NAME) for data, checkpoints, workdirs; empty: no mount
MOUNT=${MOUNT:-/mnt/gcs}                         # where BUCKET is mounted (gcsfuse) on every worker
CONFIG=${CONFIG:-configs/llava15_13b.py:stage2}  # training config (configs/X.py[:arg])
WORKDIR=${WORKDIR:-$MOUNT/workdirs/llava15_13b_s2}  # run directory: must be the same shared path on every worker
LOG_FILE=${LOG_FILE:-xllava-train.log}           # output of `train` on each worker when DETACH=1 (remote home)
DETACH=${DETACH:-1}                              # 1: `train` runs in the background (survives a dropped ssh); 0: streams here

# ---- arguments -------------------------------------------------------------------------------------------
steps=()
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    create|setup|train|logs|stop|delete) steps+=("$1"); shift ;;
    *) echo "tpu_pod.sh: unknown step '$1' (MAIN_ARGS go after --)" >&2; usage >&2; exit 2 ;;
  esac
done
main_args=("$@")
((${#steps[@]})) || steps=(setup train)

q() { printf '%q' "$1"; }  # quote one word for the remote bash

gcloud_tpu() {  # gcloud compute tpus tpu-vm SUBCOMMAND ... with the zone and project
  local sub=$1; shift
  gcloud compute tpus tpu-vm "$sub" "$@" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"}
}

on_workers() {  # on_workers WORKERS SCRIPT: run the bash SCRIPT on the given workers (all, or 0, 1, ...)
  gcloud_tpu ssh "$TPU_NAME" --worker="$1" --command "bash -c $(q "$2")"
}

# ---- steps -----------------------------------------------------------------------------------------------
step_create() {
  # shellcheck disable=SC2086  # CREATE_FLAGS is a list of flags
  gcloud_tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" $CREATE_FLAGS
}

step_setup() {
  [[ -z "$BUCKET" || ( "$BUCKET" =~ ^gs://[^/]+/?$ && "$BUCKET" != gs://CHANGE-ME ) ]] \
    || { echo "tpu_pod.sh: set BUCKET=gs://NAME (a bucket, no path), or BUCKET= for no mount" >&2; exit 2; }
  local bucket_name=${BUCKET#gs://}; bucket_name=${bucket_name%/}
  if [[ -z "$REPO_URL" ]]; then
    # no git URL: upload this checkout (tracked and untracked-but-not-ignored files) to every worker
    local tarball; tarball=$(mktemp -t xllava-jax.XXXXXX)
    (cd "$(dirname "$0")/.." && git ls-files -z --cached --others --exclude-standard | tar --null -T - -czf "$tarball")
    gcloud_tpu scp "$tarball" "$TPU_NAME:xllava-jax.tgz" --worker=all
    rm -f "$tarball"
    local get_code="rm -rf $(q "$REMOTE_DIR") && mkdir -p $(q "$REMOTE_DIR") && tar -xzf xllava-jax.tgz -C $(q "$REMOTE_DIR")"
  else
    local get_code="{ [ -d $(q "$REMOTE_DIR")/.git ] || git clone --quiet $(q "$REPO_URL") $(q "$REMOTE_DIR"); } &&
      git -C $(q "$REMOTE_DIR") fetch --quiet origin $(q "$REPO_REF") && git -C $(q "$REMOTE_DIR") checkout --quiet FETCH_HEAD"
  fi
  on_workers all "set -euo pipefail
# 1. gcsfuse, and BUCKET mounted at MOUNT (the shared filesystem for WORKDIR; the training code takes
#    filesystem paths, not gs:// URLs). Orbax finishes a save by renaming a directory: --rename-dir-limit allows it.
if [ -n $(q "$bucket_name") ] && ! command -v gcsfuse >/dev/null; then
  echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" |
    sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse
fi
if [ -n $(q "$bucket_name") ] && ! mountpoint -q $(q "$MOUNT"); then
  sudo mkdir -p $(q "$MOUNT") && sudo chown \"\$(id -u):\$(id -g)\" $(q "$MOUNT")
  gcsfuse --implicit-dirs --rename-dir-limit=1000000 $(q "$bucket_name") $(q "$MOUNT")
fi
# 2. the code
$get_code
# 3. Python >= 3.11 in a virtual environment (uv), the package and jax with the TPU runtime (libtpu)
command -v uv >/dev/null || [ -x \"\$HOME/.local/bin/uv\" ] || curl -LsSf https://astral.sh/uv/install.sh | sh
export PATH=\"\$HOME/.local/bin:\$PATH\"
[ -x $(q "$VENV")/bin/python ] || uv venv --quiet --python $(q "$PYTHON_VERSION") $(q "$VENV")
py=\$(cd $(q "$VENV") && pwd)/bin/python
cd $(q "$REMOTE_DIR") && uv pip install --quiet --python \"\$py\" -e . 'jax[tpu]'
\"\$py\" -c 'import jax, xllava_jax; print(\"jax\", jax.__version__, \"installed in\", jax.__file__)'"
}

step_train() {
  # the same command on every worker; jax.distributed.initialize() takes the process ids from the TPU runtime
  local cmd="py=\$(cd $(q "$VENV") && pwd)/bin/python && cd $(q "$REMOTE_DIR") && exec \"\$py\" -m xllava_jax.main"
  cmd+=" --config=$(q "$CONFIG") --workdir=$(q "$WORKDIR")"
  local a
  for a in ${main_args[@]+"${main_args[@]}"}; do cmd+=" $(q "$a")"; done
  if [[ "$DETACH" == 1 ]]; then
    # in the background, in its own session (the python pid saved for `stop`); output to LOG_FILE on each worker
    on_workers all "setsid nohup bash -c $(q "$cmd") > $(q "$LOG_FILE") 2>&1 < /dev/null & echo \$! > xllava-train.pid"
    echo "started on all workers; progress: launch/tpu_pod.sh logs (worker 0 logs; the others warn only)"
  else
    on_workers all "$cmd"
  fi
}

step_logs() { on_workers 0 "tail -n 40 $(q "$LOG_FILE")"; }

step_stop() { on_workers all "[ -f xllava-train.pid ] && kill -TERM \$(cat xllava-train.pid) || true"; }

step_delete() { gcloud_tpu delete "$TPU_NAME" --quiet; }

for s in "${steps[@]}"; do
  echo "== $s ($TPU_NAME, $ZONE)"
  "step_$s"
done
