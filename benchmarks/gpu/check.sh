#!/usr/bin/env bash
# The GPU check in one command, at most 8 minutes, no network:
#
#   bash benchmarks/gpu/check.sh                 # on a GPU node; results in $OUT (else benchmarks/gpu/out)
#   bash benchmarks/gpu/check.sh --dry-run       # on the CPU, tiny sizes (what the test suite runs)
#
# 1. unpacks the wheels the node lacks from .whl/ (fetched beforehand with
#    `python -m benchmarks.gpu.wheels fetch`) into $SIGNTUNE_SITE (default /tmp/signtune-site);
# 2. runs `python -m benchmarks.gpu "$@"` with that folder and this tree's src/ first on
#    PYTHONPATH, offline, under a hard limit of $SIGNTUNE_CHECK_LIMIT_S seconds (default 470; the
#    check's own budget is 440 s and each part stops itself within its share, plus a grace of 15 s).
# Extra arguments go to `python -m benchmarks.gpu` (--out DIR, --budget-s S, --parts oom,t5, --peak-tflops T).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PYTHON="${PYTHON:-python3}"
SITE="${SIGNTUNE_SITE:-${TMPDIR:-/tmp}/signtune-site}"
"$PYTHON" -m benchmarks.gpu.wheels install --src .whl --target "$SITE"
export PYTHONPATH="$SITE:$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 SIGNTUNE_CHECK_ENTRY="bash benchmarks/gpu/check.sh"
exec timeout -k 10 "${SIGNTUNE_CHECK_LIMIT_S:-470}" "$PYTHON" -m benchmarks.gpu "$@"
