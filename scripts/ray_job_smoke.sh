#!/usr/bin/env bash
# Start a local Ray head, submit a tiny training job with `ray job submit --working-dir .`,
# wait for SUCCEEDED, check its summary.json, and stop the head (always, even on failure).
#   scripts/ray_job_smoke.sh            # uses .venv if present
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .venv ]; then source .venv/bin/activate; fi  # `python` in the job = this venv's
OUT="$(mktemp -d /tmp/ram-wsi-job-XXXXXX)"
PORT="${RAY_DASHBOARD_PORT:-8265}"
ADDR="http://127.0.0.1:${PORT}"
cleanup() { ray stop --force >/dev/null 2>&1 || true; }
trap cleanup EXIT
trap "exit 130" INT TERM

t0=$(date +%s)
ray start --head --num-cpus 2 --dashboard-port "$PORT" --disable-usage-stats >"$OUT/head.log" 2>&1
echo "head started in $(( $(date +%s) - t0 )) s (token: ~/.ray/auth_token)"

DATA_ARGS=()
if [ -d ../shared/data/mnist ]; then DATA_ARGS=(--data-dir "$(cd ../shared/data/mnist && pwd)"); fi
ID="ram-wsi-smoke-$(date +%s)"
export RAY_AUTH_MODE=token
ray job submit --address "$ADDR" --working-dir . --submission-id "$ID" --no-wait -- \
    python pipelines/train.py --config configs/smoke.yaml --out-dir "$OUT/run" "${DATA_ARGS[@]}"

status=PENDING
for _ in $(seq 1 120); do
    status=$(ray job status --address "$ADDR" "$ID" 2>&1 | grep -oiE "pending|running|succeeded|failed|stopped" | tail -1 | tr a-z A-Z || true)
    case "$status" in SUCCEEDED|FAILED|STOPPED) break ;; esac
    sleep 3
done
ray job logs --address "$ADDR" "$ID" | grep -E "^(ray:|distributed|epoch|test error|run directory)" || true
echo "job $ID: $status after $(( $(date +%s) - t0 )) s"
if [ "$status" != SUCCEEDED ]; then ray job logs --address "$ADDR" "$ID" | tail -40; exit 1; fi
test -f "$OUT/run/summary.json" && test -f "$OUT/run/last.pt"
echo "summary: $OUT/run/summary.json"
