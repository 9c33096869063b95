#!/usr/bin/env bash
# One GPU session on a bare machine WITHOUT network: install this checkout
# (offline), run the CUDA tests and the four GPU workloads (PyTorch defaults
# vs autotune vs the peer pytorch-autotune 2.0), print a short summary.
#
#   bash benchmarks/gpu_session.sh                      # ~8 min, results in benchmarks/results/gpu_<date>_<device>/
#   bash benchmarks/gpu_session.sh --workload resnet18 --budget 150 --total-s 540
#   COPY_TO=/some/dir bash benchmarks/gpu_session.sh    # also one tarball of the results there
#
# Arguments go to benchmarks/run_gpu.py. Environment:
#   PYTHON   the interpreter that has a CUDA torch (default: python3)
#   WHEELS   a folder of wheels for what that interpreter lacks (default: .whl
#            if it exists). The project's dependencies missing from a typical
#            CUDA image are jsonschema and its own: jsonschema,
#            jsonschema-specifications, referencing, rpds-py (rpds-py is
#            compiled: fetch it for the GPU machine's Python, e.g.
#            pip download --no-deps --only-binary=:all: --python-version 3.12
#            --implementation cp --platform manylinux_2_17_x86_64 -d .whl
#            jsonschema jsonschema-specifications referencing rpds-py).
#   LIMIT_S  hard limit for run_gpu.py as a whole, seconds (default 540);
#            run_gpu.py keeps to its own --total-s (default 470) inside it.
#   COPY_TO  a folder to copy the results to as gpu_results.tar.gz.
#
# The peer's wheel is committed (benchmarks/peer/, 20 kB, MIT): nothing is
# downloaded. Everything written goes under the results folder as it is
# measured, so a run cut short still leaves its data.
set -u
cd "$(dirname "$0")/.." || exit 2
PY="${PYTHON:-python3}"
LIMIT_S="${LIMIT_S:-540}"
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
started=$(date +%s)

echo "== gpu_session: $(date -u +%FT%TZ) on $(hostname)"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_session: $PY has no CUDA torch (torch.cuda.is_available() is False); nothing to do"
    exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true

SITE=/tmp/autotune-site
WHEELS="${WHEELS:-}"
[ -z "$WHEELS" ] && [ -d .whl ] && WHEELS=.whl
if [ -n "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "== installing $(ls "$WHEELS"/*.whl | wc -l) wheel(s) from $WHEELS (offline) into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHEELS"/*.whl || { echo "gpu_session: installing $WHEELS failed"; exit 2; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi

echo "== installing this checkout (offline, no dependencies)"
if ! "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . >/tmp/autotune-install.log 2>&1; then
    echo "   editable install failed ($(tail -1 /tmp/autotune-install.log)); installing into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" . \
        >>/tmp/autotune-install.log 2>&1 || { tail -20 /tmp/autotune-install.log; exit 2; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
missing=$("$PY" - <<'EOF'
import importlib
names = ["autotune", "pluggy", "yaml", "jsonschema", "psutil", "pynvml", "cpuinfo", "joblib",
         "cloudpickle", "matplotlib", "tqdm", "pytest"]
print(" ".join(n for n in names if importlib.util.find_spec(n) is None))
EOF
)
if [ -n "$missing" ]; then
    echo "gpu_session: missing Python modules: $missing"
    echo "  carry their wheels (see WHEELS above) and run again"
    exit 2
fi
"$PY" -c "import autotune.plugins.compile" || { echo "gpu_session: autotune's plugins do not import"; exit 2; }
"$PY" -m autotune detect 2>&1 | head -20 || true

echo "== run_gpu.py (hard limit ${LIMIT_S} s)"
log=/tmp/run_gpu.log
timeout -k 10 "$LIMIT_S" "$PY" benchmarks/run_gpu.py --out benchmarks/results "$@" 2>&1 | tee "$log"
code=${PIPESTATUS[0]}
folder=$(sed -n 's/^run_gpu: .* -> \(.*\)$/\1/p' "$log" | tail -1)

echo "== summary (run_gpu exit $code, $(( $(date +%s) - started )) s in all)"
if [ -n "$folder" ] && [ -f "$folder/summary.txt" ]; then
    cat "$folder/summary.txt"
elif [ -n "$folder" ]; then
    echo "no summary.txt (cut short); partial files in $folder:"; ls -l "$folder"
fi
if [ -n "${COPY_TO:-}" ] && [ -n "$folder" ]; then
    mkdir -p "$COPY_TO" && cp "$log" "$folder/run_gpu.log" 2>/dev/null
    tar -czf "$COPY_TO/gpu_results.tar.gz" -C "$(dirname "$folder")" "$(basename "$folder")" \
        && echo "results copied to $COPY_TO/gpu_results.tar.gz"
fi
exit "$code"
