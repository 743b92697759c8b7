#!/usr/bin/env bash
# Run the airspeed-velocity suite in the current Python environment and keep the results.
#
#   benchmarks/run_asv.sh [ASV RUN OPTIONS...]       e.g. --quick, --bench Forward.time_forward
#
# Plain `asv run --python=same` fails on first use ("No information stored about machine")
# and, with an existing environment, saves nothing without a commit hash. This does the
# working sequence:
#   1. asv machine --yes                 record this machine's description (defaults)
#   2. asv run --python=same --set-commit-hash $(git rev-parse HEAD) OPTIONS...
# Then compare two saved runs with `asv compare COMMIT1 COMMIT2` (or `asv show COMMIT`).
# Environment: PYTHON (default python3), ASV_CONFIG (default asv.conf.json at the root),
# ASV_MACHINE (a machine name; default: the host name).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CONFIG=${ASV_CONFIG:-asv.conf.json}
MACHINE=(${ASV_MACHINE:+--machine "$ASV_MACHINE"})

if ! commit=$(git rev-parse HEAD 2>/dev/null); then
    echo "run_asv.sh: not a git checkout; asv saves results under a commit hash" >&2
    exit 2
fi
"$PY" -m asv machine --yes --config "$CONFIG" "${MACHINE[@]}" > /dev/null
"$PY" -m asv run --python=same --set-commit-hash "$commit" --config "$CONFIG" \
    "${MACHINE[@]}" "$@"
echo "asv results saved under commit $commit"
echo "compare with another saved commit: $PY -m asv compare --config $CONFIG OTHER $commit"
