#!/usr/bin/env bash
# Device check for the sweep engines (run from the repo root on a GPU machine; writes under $OUT):
# GPU latency through Ray tasks that request a GPU, against the local engine (latency on the driver),
# then the engine tests on an idle many-core machine, timed.
set -u
OUT=${OUT:-/tmp/kcp-engines-gpu}
mkdir -p "$OUT"
nvidia-smi -L
python -c "import torch, ray; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'ray', ray.__version__)"
export KCP_CACHE_DIR=$(mktemp -d)
common=(sweep --model digits-cnn --layer all --kt 1,2 --cp 2,4 --images 64 --latency --device cuda --batch 64)
/usr/bin/time -f "ray sweep %e s" timeout 240 python -m kcp "${common[@]}" --engine ray --workers 4 \
    --cache-dir "$KCP_CACHE_DIR/ray" --out "$OUT/gpu_ray.json" 2>&1 | tr '\r' '\n' | tail -3
/usr/bin/time -f "local sweep %e s" timeout 120 python -m kcp "${common[@]}" --engine local --workers 4 \
    --cache-dir "$KCP_CACHE_DIR/local" --out "$OUT/gpu_local.json" 2>&1 | tr '\r' '\n' | tail -3
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
timed = ("seconds", "latency_ms", "dense_latency_ms", "device")
ray, local = (json.loads((out / f"gpu_{n}.json").read_text())["rows"] for n in ("ray", "local"))
same = [{k: v for k, v in r.items() if k not in timed} for r in ray] == \
       [{k: v for k, v in r.items() if k not in timed} for r in local]
print("rows", len(ray), "same untimed rows:", same, "errors:", [r["error"] for r in ray if r["error"]])
print("devices:", {r["device"] for r in ray}, "all timed:", all(r["latency_ms"] for r in ray + local))
for r in ray[:6]:
    print(r["layer"], r["method"], r["kt_rank"], r["cp_rank"], "ray %.4f ms" % r["latency_ms"],
          "dense %.4f ms" % r["dense_latency_ms"])
PY
/usr/bin/time -f "engine tests %e s" timeout 200 python -m pytest tests/engines -q -p no:cacheprovider 2>&1 | tail -4
