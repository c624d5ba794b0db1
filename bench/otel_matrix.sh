#!/usr/bin/env bash
# Which opentelemetry-sdk releases the telemetry fast path (xzatoma/telemetry/_fast.py) is
# correct on: for each, a throwaway virtualenv with this checkout of xzatoma and that SDK,
# API and Prometheus exporter, and the telemetry tests run with the fast path forced on for
# it. A release where every test passes may go into TESTED_SDK_MINORS (and, if older,
# OLDEST_TESTED_SDK) and the opentelemetry pins of pyproject.toml.
#
#   bench/otel_matrix.sh                      # the default minors below
#   bench/otel_matrix.sh 1.44 1.45 1.46       # these minors (the newest release of each)
#   bench/otel_matrix.sh 1.45.0 1.45.1        # these exact releases
#
# Needs the network (PyPI), so CI does not run it. Environment: PYTHON (the interpreter the
# virtualenvs are made from, default python3), OTEL_MATRIX_DIR (where they go, default a new
# directory under /tmp; reused if given, so a second run skips the installs).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
work=${OTEL_MATRIX_DIR:-$(mktemp -d /tmp/otel-matrix.XXXXXX)}
mkdir -p "$work"
# The newest release of the tested minor, and the next minor (not installable until it is out).
if [ "$#" -gt 0 ]; then minors=("$@"); else minors=(1.45 1.46); fi

# Loaded by pytest before any test module: the installed release counts as tested, so the
# fast path is taken and the tests judge it (instead of proving that it stays off).
cat >"$work/otel_matrix_force.py" <<'EOF'
import re

from opentelemetry.sdk.version import __version__

from xzatoma.telemetry import _fast

_release = tuple(int(part) for part in re.match(r"(\d+)\.(\d+)\.(\d+)", __version__).groups())
_fast.TESTED_SDK_MINORS = frozenset(_fast.TESTED_SDK_MINORS | {_release[:2]})
_fast.OLDEST_TESTED_SDK = min(_fast.OLDEST_TESTED_SDK, _release)
assert _fast.sdk_is_tested(__version__)
EOF

pins_test=test_pyproject_pins_the_opentelemetry_releases_the_fast_path_was_tested_on
declare -A outcome
for minor in "${minors[@]}"; do
    sub=${minor#1.}
    sub=${sub%%.*}
    case $minor in *.*.*) pin="==$minor" ;; *) pin="==$minor.*" ;; esac
    # The exporter's minor runs 21 ahead of the SDK's (SDK 1.45 with exporter 0.66b*), and
    # each exporter release requires the SDK release it came with.
    exporter="0.$((sub + 21))"
    venv="$work/venv-$minor"
    log="$work/$minor.log"
    echo "== opentelemetry-sdk $pin (exporter $exporter.*): $venv, log $log"
    : >"$log"
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --upgrade pip >>"$log" 2>&1
        "$venv/bin/python" -m pip install --quiet -e "$repo[dev,prometheus]" >>"$log" 2>&1
    fi
    # Installed after xzatoma, so a minor outside pyproject's range is tried too (pip warns).
    if ! "$venv/bin/python" -m pip install --quiet \
        "opentelemetry-api$pin" "opentelemetry-sdk$pin" \
        "opentelemetry-exporter-prometheus>=${exporter}b0,<$exporter.999" >>"$log" 2>&1; then
        outcome[$minor]="not installable (see $log)"
        continue
    fi
    installed=$("$venv/bin/python" -c \
        'from opentelemetry.sdk.version import __version__ as v; print(v)')
    # The pins test is left out: it checks pyproject.toml against TESTED_SDK_MINORS, which the
    # plugin has just widened.
    if (cd "$repo" && PYTHONPATH="$work" "$venv/bin/python" -m pytest -q -p no:cacheprovider \
        -p otel_matrix_force tests/test_telemetry_fast.py tests/test_telemetry.py \
        --deselect "tests/test_telemetry_fast.py::$pins_test") >>"$log" 2>&1; then
        outcome[$minor]="pass ($installed)"
    else
        code=$?
        failed=$(grep -cE '^(FAILED|ERROR) ' "$log" || true)
        outcome[$minor]="FAIL ($installed): pytest exit $code, $failed failed, see $log"
    fi
done

echo
echo "opentelemetry-sdk: outcome"
status=0
for minor in "${minors[@]}"; do
    echo "  $minor: ${outcome[$minor]}"
    case ${outcome[$minor]} in FAIL*) status=1 ;; esac
done
exit "$status"
