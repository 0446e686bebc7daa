#!/usr/bin/env bash
# The DLRM family's GPU figures of BENCHMARKS.md ("One GPU: DLRM and DCNv2"), part by part, each
# part's full output in OUT_DIR (default ./dlrm-family-out) and its table lines on stdout:
#
#   bash benchmarks/dlrm_family.sh tests kernels      # the GPU tests of the kernels and steps, then the pieces alone
#   bash benchmarks/dlrm_family.sh onehot mlperf      # the one-hot d=16 table, MLPerf's DCNv2 on its bags
#   bash benchmarks/dlrm_family.sh others             # WDL, DCN and DeepFM in their best variant (regressions)
#
# Run from the repository root on a CUDA machine; about 2-4 minutes a part (compiling with
# autotune takes a minute a model on a fresh machine).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" TRITON_INTERPRET=0
OUT_DIR="${OUT_DIR:-$PWD/dlrm-family-out}"
mkdir -p "$OUT_DIR"
BEST=graph+bf16+compile+bf16-rows+overlap+ahead

# logged NAME CMD...: run CMD with its output in OUT_DIR/NAME.txt; its exit code.
logged() {
    local name="$1"
    shift
    "$@" > "$OUT_DIR/$name.txt" 2>&1
}

run_part() {
    local rc
    case "$1" in
        tests)
            logged tests python -m pytest -q tests/test_interaction.py tests/test_fastpath.py tests/test_fastpath_bags.py \
                tests/test_kernels.py tests/test_bag_pool.py tests/test_models_dlrm.py tests/test_sharded_bags.py
            rc=$?; tail -3 "$OUT_DIR/tests.txt" ;;
        kernels)
            logged kernels bash -c "cd benchmarks && python bench_interaction.py && python bench_dense_step.py --models dlrm,dcnv2"
            rc=$?; grep "^|" "$OUT_DIR/kernels.txt" ;;
        onehot)
            logged onehot python benchmarks/bench_gpu.py --quick --models dlrm,dcnv2 --configs 8192x16 --profile \
                --variants "$BEST,$BEST+autotune"
            rc=$?; grep -E "^\| (dlrm|dcnv2)|CHECK FAILED|streams, per step" "$OUT_DIR/onehot.txt" ;;
        mlperf)
            logged mlperf python benchmarks/bench_gpu.py --quick --skip-check --models dcnv2 --configs 8192x128 --bags mlperf \
                --shape mlperf --variants "$BEST,$BEST+autotune"
            rc=$?; grep -E "^\| dcnv2" "$OUT_DIR/mlperf.txt" ;;
        others)
            logged others python benchmarks/bench_gpu.py --quick --skip-check --models wdl,dcn,dfm --configs 8192x16,8192x128 \
                --variants "$BEST,$BEST+implicit"
            rc=$?; grep -E "^\| (wdl|dcn|dfm)" "$OUT_DIR/others.txt" ;;
        *)
            echo "unknown part '$1': choose tests, kernels, onehot, mlperf or others" >&2
            return 2 ;;
    esac
    return $rc
}

status=0
for part in "${@:-tests}"; do
    echo "== $part ($(date -u +%H:%M:%S) UTC)"
    run_part "$part" || status=$?
done
exit $status
