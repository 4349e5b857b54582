#!/usr/bin/env bash
# On a lent GPU machine (this workplace's `device` tool), after `python benchmarks/device/pack.py`
# here, with `.gpu` carried:
#   bash benchmarks/device/train.sh              the default training, timed by train_time.py
#   bash benchmarks/device/train.sh A.json ...   config variants (files under .gpu/), one after another
# What comes back in $OUT: the timing table and/or, per run, its trained tensors (split.py).
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_MININTERVAL=15
here=benchmarks/device
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 $here/rebuild.py .gpu/minilm /tmp/minilm || exit 1
export GPU_MINILM_DIR=/tmp/minilm PYTHONPATH=$PWD/$here/shim:$PWD
data=(--catalog .gpu/data/products.csv.gz --judgments .gpu/data/judgments.csv.gz)
if [ $# -eq 0 ]; then
  python3 benchmarks/train_time.py --device cuda "${data[@]}" --out /tmp/ck --results "$OUT" \
    > "$OUT/train.log" 2>&1 || { tail -c 4000 "$OUT/train.log"; exit 1; }
  python3 $here/split.py /tmp/ck "$OUT"
  cat "$OUT"/train-time-cuda.md
  exit 0
fi
export SIDSERVE_CACHE_DIR=/tmp/cache TQDM_DISABLE=1
for cfg in "$@"; do
  name=$(basename "$cfg" .json)
  python3 -m sidserve.cli train --device cuda --config "$cfg" "${data[@]}" --out "/tmp/ck-$name" \
    2>&1 | grep -E "INFO training.train: (train|trained)"
  python3 $here/split.py "/tmp/ck-$name" "$OUT" "$name-"
done
ls -la "$OUT"
