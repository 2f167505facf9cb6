#!/usr/bin/env bash
# The accelerator suite (bench/gpu_suite.py): one JSON file, $OUT/gpu_suite.json when $OUT is set.
#
#   bench/gpu_suite.sh           # on the GPU machine, about 7 minutes, hard limit SUITE_LIMIT_S
#   bench/gpu_suite.sh --tiny    # CI-size models, on any CPU, in seconds
#
# The GPU machine's python3 has torch and transformers but not pydantic (which vlmclf needs):
# bench/gpu_wheels.sh downloads the wheels into .whl/ here; they are installed from there.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python3}
if ! "$python" -c "import pydantic" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "error: $python lacks pydantic and .whl/ holds no wheels (run bench/gpu_wheels.sh)" >&2
    exit 2
  fi
  site=${TMPDIR:-/tmp}/vlmclf-site
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl || exit 2
  export PYTHONPATH="$PYTHONPATH:$site"
fi
# For the log only: which card and driver (a query; nothing about the card is changed).
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi
limit=${SUITE_LIMIT_S:-480}
if [[ " $* " == *" --tiny "* ]]; then limit=${SUITE_LIMIT_S:-300}; fi
# The suite writes its JSON after every step, so even a kill at the limit leaves the figures so far.
timeout --signal=TERM --kill-after=10 "$limit" "$python" bench/gpu_suite.py "$@"
