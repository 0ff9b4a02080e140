#!/usr/bin/env bash
# Multi-node MaskDCPT on GPUs with the DeepSpeed launcher, run on the first node of the hostfile.
# It switches the defaults to their scaled form through params only (no code change) and runs the usual
# `dvc repro`, so DVC still records every version: bf16, ZeRO-2, nccl, the paper's NAFNet, 256 px crops, and
# the training stages' launcher set to `deepspeed --hostfile ... --module`.
set -euo pipefail
cd "$(dirname "$0")/../.."
source .venv/bin/activate
HOSTFILE=${HOSTFILE:-infra/deepspeed/hostfile}
[ -f "$HOSTFILE" ] || { echo "hostfile $HOSTFILE not found (see infra/deepspeed/hostfile.example)"; exit 2; }
python - "$HOSTFILE" <<'PY'
import sys
import yaml
from pipelines.params import load_params, set_dotted
p = load_params()
for key, value in {"deepspeed.bf16": True, "deepspeed.zero_stage": 2, "deepspeed.dist_backend": "nccl",
                   "deepspeed.launcher": f"deepspeed --hostfile {sys.argv[1]} --module",
                   "model.preset": "paper-5d", "synthesize.crop": 256, "pretrain.batch_size": 4,
                   "finetune.batch_size": 6}.items():
    set_dotted(p, key, value)
open("params.yaml", "w").write(yaml.safe_dump(p, sort_keys=False))
PY
dvc repro
