#!/usr/bin/env bash
# Does an export load and run in TF Serving's own TensorFlow runtime?
#
# The official `tensorflow_model_server` cannot be installed here (no apt
# repository, no Docker registry), so this check takes the closest path that
# can: a throwaway venv holding ONLY `tensorflow` at the version of the
# newest official TF Serving release (its `tensorflow-serving-api` package on
# PyPI is released with the server and pins that TensorFlow), and TF
# Serving's loading path in it: the session loader (fresh graph and TF1
# session, restore through the saver, init op, then each signature by its
# SignatureDef tensor names; serving/session_loader.py). The inputs are the
# export's own warmup requests; the outputs must equal what this repo's venv
# computes on the same export (max abs diff <= 1e-6). Under strace, the
# replay must open the files of assets/ (the vocabulary) as often for 20
# calls as for one (tables initialised at load, never per call).
#
#   scripts/tfserving_runtime_check.sh [VERSION_DIR]
#
# VERSION_DIR: an export (BASE/NAME/<n>); without it one is built from
# generated rows (pipeline + a short CPU-preset retrain + `serving export`,
# a few minutes). Environment: TF_VERSIONS="2.19.1 2.21.0" to check given
# releases instead of the newest; PYTHON (default python3.11) for the venvs;
# KEEP_WORK=1 keeps the work dir (venvs, export, recordings).
# Not part of `make test`: it downloads TensorFlow from PyPI (~600 MB).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
REPO_PY="$ROOT/.venv/bin/python"
VENV_PY="${PYTHON:-python3.11}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tfserving_check.XXXXXX")"
[[ "${KEEP_WORK:-0}" == 1 ]] || trap 'rm -rf "$WORK"' EXIT

log() { printf '[tfserving_runtime_check] %s\n' "$*" >&2; }

VERSION_DIR="${1:-}"
if [[ -z "$VERSION_DIR" ]]; then
    log "building an export in $WORK (generated rows -> pipeline -> retrain -> serving export)"
    (cd "$ROOT" && "$REPO_PY" - "$WORK" <<'EOF'
import pathlib, sys
from benchmarks.serving_bench import build_worst
from serving.export import export

work = pathlib.Path(sys.argv[1])
model = build_worst(work, 5000)  # every edge, all four ops mixed: each kind of layer is exported
result = export(str(model.run), str(model.data), str(work / "models"), "ctr", verify_rows=200)
(work / "version_dir").write_text(str(result.version_dir))
EOF
    ) >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; exit 1; }
    VERSION_DIR="$(cat "$WORK/version_dir")"
fi
[[ -f "$VERSION_DIR/saved_model.pb" ]] || { log "error: $VERSION_DIR/saved_model.pb is missing"; exit 2; }

if [[ -z "${TF_VERSIONS:-}" ]]; then
    # "tensorflow-serving-api (2.21.0)" -> 2.21 -> the newest tensorflow 2.21.x
    api="$("$REPO_PY" -m pip index versions tensorflow-serving-api 2>/dev/null | sed -n 's/^tensorflow-serving-api (\(.*\))$/\1/p')"
    [[ -n "$api" ]] || { log "error: cannot ask PyPI for tensorflow-serving-api's versions"; exit 1; }
    minor="${api%.*}"
    TF_VERSIONS="$("$REPO_PY" -m pip index versions tensorflow 2>/dev/null | sed -n 's/^Available versions: //p' \
        | tr ',' '\n' | tr -d ' ' | grep -E "^${minor//./\\.}\.[0-9]+$" | head -1)"
    [[ -n "$TF_VERSIONS" ]] || { log "error: no tensorflow ${minor}.x on PyPI"; exit 1; }
    log "newest TF Serving release on PyPI: tensorflow-serving-api $api -> tensorflow $TF_VERSIONS"
fi

cp "$ROOT/serving/session_loader.py" "$WORK/session_loader.py"  # run outside the repo's package
log "recording the warmup requests' outputs with this repo's TensorFlow"
"$REPO_PY" "$WORK/session_loader.py" "$VERSION_DIR" --save "$WORK/reference.json" 2>"$WORK/record.log" \
    || { tail -20 "$WORK/record.log" >&2; exit 1; }

status=0
for version in $TF_VERSIONS; do
    venv="$WORK/venv-tf$version"
    log "tensorflow==$version: building $venv"
    "$VENV_PY" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "tensorflow==$version" >"$WORK/pip-$version.log" 2>&1 \
        || { tail -20 "$WORK/pip-$version.log" >&2; exit 1; }
    compare=("$venv/bin/python" "$WORK/session_loader.py" "$VERSION_DIR" --compare "$WORK/reference.json")
    if ! "${compare[@]}" >"$WORK/compare-$version.log" 2>&1; then
        tail -20 "$WORK/compare-$version.log" >&2
        log "FAIL: tensorflow==$version cannot load or run $VERSION_DIR like the recording"
        status=1
        continue
    fi
    grep -v -E '^(WARNING|I0000|W0000|E0000)|cuda|oneDNN|AVX|cpu_feature_guard|tf.saved_model.load|Instructions for updating' \
        "$WORK/compare-$version.log" >&2 || true
    log "PASS: tensorflow==$version loads $VERSION_DIR with the session loader and reproduces every signature"
    if command -v strace >/dev/null; then
        # Tables initialised at load: the asset opens must not grow with the number of calls.
        for n in 1 20; do
            strace -f -qq -e trace=open,openat -o "$WORK/strace-$version-$n.txt" \
                "${compare[@]}" --repeat "$n" >/dev/null 2>&1
        done
        assets="$VERSION_DIR/assets/"
        one="$(grep -c -F "$assets" "$WORK/strace-$version-1.txt" || true)"
        twenty="$(grep -c -F "$assets" "$WORK/strace-$version-20.txt" || true)"
        if [[ "$one" -lt 1 ]]; then
            log "FAIL: no file of $assets opened: the trace cannot tell when tables load"
            status=1
        elif [[ "$one" == "$twenty" ]]; then
            log "PASS: files of assets/ opened $one time(s) per load, for 1 and for 20 calls of each signature"
        else
            log "FAIL: files of assets/ opened $one times for 1 call and $twenty for 20: read per call"
            status=1
        fi
    else
        log "strace is not installed: the per-call asset read check is skipped"
    fi
done
exit $status
