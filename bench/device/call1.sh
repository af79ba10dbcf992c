#!/bin/bash
# Device call 1 (2026-12-04): stash MiniLM + data in /tmp/keep; encode timing (quiet); then, on the GPU at once:
# the layer-copied distillation students (train only; scored in call 2, which has faiss) and the Block Skim readers.
set -u
export PYTHONUNBUFFERED=1
T0=$(date +%s); el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
python3 bench/device/unpack.py || exit 1
mkdir -p /tmp/site && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .dev/small/*.whl || exit 1
export REPRLAB_SHARED_DATA=/tmp/keep/data
BASE=/tmp/site:/tmp/keep/pkg:$PWD/src:$PWD/bench
mkdir -p $OUT/enc /tmp/logs
# 1. GPU encoding, alone on the machine: 3 timed passes each, vectors kept in fp16 for scoring at home
el "encode_gpu"
PYTHONPATH=.dev/stub:$BASE timeout 200 python3 bench/encode_gpu.py --device cuda --no-eval --keep-fp16 --keep /tmp/enc \
  --output /tmp/enc/encode-gpu-cuda.json > /tmp/logs/enc.log 2>&1; echo "encode rc=$?"; tail -3 /tmp/logs/enc.log
(cd /tmp && tar czf $OUT/enc/enc.tgz enc)
# 2. trainings at once on the GPU
el "trainings"
W=/tmp/dd; mkdir -p $W
dd() { name=$1; shift; PYTHONPATH=.dev/stub:$BASE timeout 330 python3 bench/distill_dev.py --device cuda --threads 1 \
  --work-dir $W --train-only --name "$name" "$@" > /tmp/logs/dd-$name.log 2>&1; echo "$name rc=$?"; }
dd kd --method kd & dd ckd --method ckd & dd seed --method seed &
dd kd-seed1 --method kd --seed 1 & dd ckd-seed1 --method ckd --seed 1 &
dd kd-seed2 --method kd --seed 2 & dd ckd-seed2 --method ckd --seed 2 &
dd ckd-matched --method ckd --layer-map 0:0,1:1,2:5,3:6 &
dd ckd-matched-x10 --method ckd --layer-map 0:0,1:1,2:5,3:6 --ckd-weights 1000,100,1000,100 &
(mkdir -p $OUT/bs; PYTHONPATH=.dev/stub:$BASE timeout 330 python3 bench/blockskim.py --train-only --device cuda --work-dir runs/blockskim-long \
   --hotpotqa-contexts all --variants frozen-diagonal+question --sequential --threads 6 --checkpoint-every 500 \
   --export-to $OUT/bs > /tmp/logs/bs-train.log 2>&1; echo "blockskim rc=$?") &
wait
el "trainings done"
ls $W; for f in /tmp/logs/dd-*.log; do echo "== $f"; tail -2 $f; done
tar czf $OUT/logs1.tgz -C /tmp logs
el "end"; ls -la $OUT $OUT/*
