#!/usr/bin/env bash
# CI: fuzz each target of fuzz/ for a bounded time (docs/fuzzing.md).
#
# Builds the targets with libFuzzer's coverage instrumentation on the stable toolchain (no
# sanitizer, so no nightly, no RUSTC_BOOTSTRAP and no cargo-fuzz needed: the flags below are
# stable rustc flags), then runs each one for FUZZ_SECONDS (default 60) on a scratch copy of
# its checked-in corpus, FUZZ_JOBS (default 2) targets at a time. The whole step, build
# included, is kept within FUZZ_TOTAL_SECONDS (default 480): when the build took long, each
# target gets less time (never under FUZZ_MIN_SECONDS, default 15). A crash, a hang past the
# per-input timeout or a memory blow-up fails the build; the input is kept in
# fuzz/artifacts/TARGET/ and printed, to be added to fuzz/regressions/TARGET/.
#
# Needs a C++ compiler (libFuzzer is C++); installs g++ with apt-get when there is none.
# Idempotent: a second run reuses fuzz/target.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
FUZZ_JOBS="${FUZZ_JOBS:-2}"
FUZZ_TOTAL_SECONDS="${FUZZ_TOTAL_SECONDS:-480}"
FUZZ_MIN_SECONDS="${FUZZ_MIN_SECONDS:-15}"
step_start=$SECONDS
TARGETS=(${FUZZ_TARGETS:-h1_split h1_serve config admin_body ofrep_body})

if ! command -v c++ >/dev/null 2>&1; then
    echo "== installing g++ (libFuzzer is built from C++ sources)"
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    $SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
fi

HOST="$(rustc -vV | sed -n 's/^host: //p')"
# What `cargo fuzz build -s none` passes, less its single codegen unit (a much longer build).
# `--target` keeps the instrumentation out of build scripts and proc macros.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 --cfg fuzzing"
export CARGO_TARGET_DIR="$PWD/fuzz/target"

echo "== building the fuzz targets ($(rustc -V))"
start=$SECONDS
cargo build --locked --release --manifest-path fuzz/Cargo.toml --target "$HOST" --bins
echo "built in $((SECONDS - start)) s"
BIN="$CARGO_TARGET_DIR/$HOST/release"

# Per target time: FUZZ_SECONDS, less when the build left too little of the total for every
# round of FUZZ_JOBS targets (10 s a round kept for start-up and the final merge).
rounds=$(((${#TARGETS[@]} + FUZZ_JOBS - 1) / FUZZ_JOBS))
left=$((FUZZ_TOTAL_SECONDS - (SECONDS - step_start)))
fit=$((left / rounds - 10))
if [ "$fit" -lt "$FUZZ_SECONDS" ]; then
    FUZZ_SECONDS=$((fit > FUZZ_MIN_SECONDS ? fit : FUZZ_MIN_SECONDS))
    echo "the build left ${left} s of ${FUZZ_TOTAL_SECONDS} s: ${FUZZ_SECONDS} s a target"
fi

# Per target: largest input, dictionary.
declare -A MAX_LEN=([h1_split]=4096 [h1_serve]=4096 [config]=8192 [admin_body]=4096 [ofrep_body]=12288)
declare -A DICT=([h1_split]=http.dict [h1_serve]=http.dict [config]=config.dict [admin_body]=json.dict [ofrep_body]=ofrep.dict)

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

run_target() {
    local target="$1" work="$scratch/$1" input
    mkdir -p "$work/corpus" "$work/seeds" "fuzz/artifacts/$target"
    # Seeds: the corpus and the kept regressions, less those skipped as known (NAME.skip),
    # which would stop the run at once.
    cp fuzz/corpus/"$target"/* "$work/seeds/"
    for input in fuzz/regressions/"$target"/*; do
        case "$input" in *.skip | *.md) continue ;; esac
        if [ -f "$input" ] && [ ! -f "$input.skip" ]; then
            cp "$input" "$work/seeds/regression-$(basename "$input")"
        fi
    done
    # libFuzzer adds what it finds to the first directory: a scratch one, so the checked-in
    # corpus stays as reviewed.
    "$BIN/$target" "$work/corpus" "$work/seeds" \
        -dict="fuzz/dict/${DICT[$target]}" \
        -max_len="${MAX_LEN[$target]}" \
        -max_total_time="$FUZZ_SECONDS" \
        -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
        -artifact_prefix="fuzz/artifacts/$target/" \
        -print_final_stats=1 >"$work/log" 2>&1
}

echo "== fuzzing ${TARGETS[*]} for ${FUZZ_SECONDS} s each, ${FUZZ_JOBS} at a time"
failed=()
pids=()
names=()
for target in "${TARGETS[@]}"; do
    run_target "$target" &
    pids+=($!)
    names+=("$target")
    if [ "${#pids[@]}" -ge "$FUZZ_JOBS" ]; then
        wait "${pids[0]}" || failed+=("${names[0]}")
        pids=("${pids[@]:1}")
        names=("${names[@]:1}")
    fi
done
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || failed+=("${names[$i]}")
done

for target in "${TARGETS[@]}"; do
    log="$scratch/$target/log"
    # The last status line: runs, coverage, corpus size, executions per second.
    summary="$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)"
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
    echo "$target: ${runs:-?} runs; ${summary:-no status line}"
done
echo "fuzz step: $((SECONDS - step_start)) s in all (${FUZZ_SECONDS} s a target)"

if [ "${#failed[@]}" -gt 0 ]; then
    for target in "${failed[@]}"; do
        echo "== $target FAILED; the end of its log:"
        tail -n 60 "$scratch/$target/log"
        for input in "fuzz/artifacts/$target"/*; do
            [ -f "$input" ] || continue
            echo "-- $input (base64; add it to fuzz/regressions/$target/):"
            base64 -w0 "$input"
            echo
        done
    done
    exit 1
fi
