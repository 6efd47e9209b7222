#!/usr/bin/env bash
# Times `stasis check` (fresh probes, and answered from the per-boot cache)
# against baselines measured in the same run: exec'ing /bin/true, and
# `criu check` when CRIU=/path/to/criu is given. Uses hyperfine when it is
# installed (apt-get install hyperfine), else a plain loop.
#
#   bench/check.sh                 # RUNS=30 by default
#   CRIU=/usr/local/sbin/criu RUNS=50 bench/check.sh
#   STASIS=/path/to/stasis bench/check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-30}
STASIS=${STASIS:-target/release/stasis}
if [ ! -x "$STASIS" ]; then
    cargo build --release --quiet
fi

state=$(mktemp -d)
trap 'rm -rf "$state"' EXIT
export STASIS_STATE_DIR=$state
"$STASIS" check >/dev/null || true # fills the per-boot cache for --cached

names=("stasis check" "stasis check --cached" "/bin/true")
cmds=("$STASIS check" "$STASIS check --cached" "/bin/true")
if [ -n "${CRIU:-}" ]; then
    names+=("criu check")
    cmds+=("$CRIU check")
fi

means=()
if command -v hyperfine >/dev/null; then
    tool="hyperfine ($(hyperfine --version | awk '{print $2}'))"
    hyperfine -N -i --style none --warmup 3 --runs "$RUNS" \
        --export-json "$state/times.json" "${cmds[@]}" >/dev/null
    while read -r s; do
        means+=("$(awk -v s="$s" 'BEGIN { printf "%.2f", s * 1000 }')")
    done < <(grep -o '"mean": *[0-9.eE+-]*' "$state/times.json" | awk -F: '{print $2}')
else
    tool="shell loop"
    for c in "${cmds[@]}"; do
        read -r -a argv <<<"$c"
        "${argv[@]}" >/dev/null 2>&1 || true # warm-up
        start=$(date +%s%N)
        for _ in $(seq "$RUNS"); do
            "${argv[@]}" >/dev/null 2>&1 || true
        done
        end=$(date +%s%N)
        means+=("$(awk -v t=$((end - start)) -v n="$RUNS" 'BEGIN { printf "%.2f", t / n / 1e6 }')")
    done
fi

echo "stasis check timing: $RUNS runs each, $tool, $(nproc) CPUs, Linux $(uname -r)"
printf '%-24s %10s %12s' "command" "mean ms" "x /bin/true"
[ -n "${CRIU:-}" ] && printf ' %12s' "x criu check"
echo
base=${means[2]}
criu=${means[3]:-}
for i in "${!names[@]}"; do
    printf '%-24s %10s %12s' "${names[$i]}" "${means[$i]}" \
        "$(awk -v a="${means[$i]}" -v b="$base" 'BEGIN { printf "%.1f", a / b }')"
    if [ -n "$criu" ]; then
        printf ' %12s' "$(awk -v a="${means[$i]}" -v b="$criu" 'BEGIN { printf "%.2f", a / b }')"
    fi
    echo
done
verdict=$(awk -v a="${means[0]}" 'BEGIN { print (a < 50) ? "met" : "NOT met" }')
echo "goal: a fresh stasis check under 50 ms: $verdict (${means[0]} ms)"
