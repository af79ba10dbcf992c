#!/bin/bash
# Device call 2 (2026-12-04), right after call 1 on the same machine: faiss etc. installed; score the distillation
# students of call 1 (dev + test), train + score the narrow students, hashing's fine-tunes, mutation testing on
# the CPU cores, and bring back the Block Skim readers trained in call 1.
set -u
export PYTHONUNBUFFERED=1
T0=$(date +%s); el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
[ -f /tmp/keep/minilm/model.safetensors ] || { echo "FRESH MACHINE: call 1's files are gone"; exit 3; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/*.whl || exit 1
export REPRLAB_SHARED_DATA=/tmp/keep/data
BASE=/tmp/site2:/tmp/keep/pkg:$PWD/src:$PWD/bench
export PYTHONPATH=$BASE
mkdir -p /tmp/logs2 $OUT/res
python3 -c "import faiss, bm25s, pytrec_eval; print('faiss', faiss.__version__)"
el "mutation"
(timeout 350 nice -n 10 python3 bench/mutation.py --jobs 11 --processes 36 --time-limit 290 > /tmp/logs2/mutation.log 2>&1;
 echo "mutation rc=$?"; tar czf $OUT/res/mutation-parts.tgz -C bench/results mutation-parts mutation.json mutation.md) &
el "narrow"
(timeout 420 python3 bench/distill_gpu.py --steps 3200 --threads 1 --work-dir /tmp/dgpu \
   --output bench/results/distill-gpu-narrow.json > /tmp/logs2/narrow.log 2>&1; echo "narrow rc=$?") &
(timeout 300 python3 bench/hashing.py --device cuda --dpr-control --save-vectors $OUT/hash > /tmp/logs2/hashing.log 2>&1;
 echo "hashing rc=$?") &
el "dev scores"
W=/tmp/dd
ev() { name=$1; PYTHONPATH=$BASE timeout 200 python3 bench/distill_dev.py --device cuda --threads 1 --work-dir $W \
  --name "$name" --model $W/$name/model > /tmp/logs2/ev-$name.log 2>&1; echo "ev $name rc=$?"; }
(ev kd; ev ckd; ev seed) & (ev kd-seed1; ev ckd-seed1; ev kd-seed2) & (ev ckd-seed2; ev ckd-matched; ev ckd-matched-x10) &
(timeout 300 python3 bench/distill.py --device cuda --threads 1 --steps 400 --work-dir $W/test \
   --trained kd=$W/kd --trained ckd=$W/ckd --trained seed=$W/seed > /tmp/logs2/distill.log 2>&1; echo "distill rc=$?";
 timeout 200 python3 bench/distill.py --device cuda --threads 1 --steps 400 --methods ckd --ckd-layer-map taken \
   --ckd-weights 1000,100,1000,100 --trained ckd=$W/ckd-matched-x10 --work-dir $W/test-x10 \
   --output bench/results/distill-ckd-x10.json > /tmp/logs2/distill-x10.log 2>&1; echo "x10 rc=$?") &
wait
el "all done"
tail -25 /tmp/logs2/distill.log; tail -12 /tmp/logs2/narrow.log
tar czf $OUT/res/results2.tgz bench/results/distill*.json bench/results/distill*.md bench/results/hash* 2>/dev/null
tar czf $OUT/logs2.tgz -C /tmp logs2 logs
el "end"; ls -la $OUT $OUT/*
