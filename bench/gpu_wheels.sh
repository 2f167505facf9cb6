#!/usr/bin/env bash
# Download, here, the wheels that the GPU machine's python3 (3.12, x86-64, no network) lacks for
# vlmclf: pydantic and what it needs. bench/gpu_suite.sh installs them from .whl/ there; name
# .whl in the device run's carry (.gitignore ignores it). Versions: those the tests run with.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  typing-extensions==4.16.0
ls -1 .whl
