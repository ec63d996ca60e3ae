#!/usr/bin/env bash
# Build TensorRT engines (1/model.plan) from the exported ONNX models, for the GPU variant of
# each model (configs/tensorrt.pbtxt; start tritonserver with --model-config-name=tensorrt).
#
#   semirec encoders export [--checkpoint DIR]      # writes <model>/1/model.onnx + trtexec_args.txt
#   triton_models/build_tensorrt.sh [REPO] [--fp16] # on the GPU machine, with trtexec on PATH
#
# Run it on the machine (same GPU model, same TensorRT version as the serving container) that
# will serve the engines: a plan is specific to both. Status: not yet run on a GPU (see
# docs/encoders.md).
set -euo pipefail

repo="$(cd "$(dirname "$0")" && pwd)"
precision=()
for arg in "$@"; do
  case "$arg" in
    --fp16) precision=(--fp16) ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) repo="$(cd "$arg" && pwd)" ;;
  esac
done

TRTEXEC=${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}
[ -x "$TRTEXEC" ] || { echo "trtexec not found (set TRTEXEC=/path/to/trtexec)" >&2; exit 1; }

built=0
for onnx in "$repo"/*/1/model.onnx; do
  [ -e "$onnx" ] || continue
  version_dir="$(dirname "$onnx")"
  model="$(basename "$(dirname "$version_dir")")"
  [ -f "$repo/$model/configs/tensorrt.pbtxt" ] || continue
  args_file="$version_dir/trtexec_args.txt"
  [ -f "$args_file" ] || { echo "$model: $args_file missing; re-run semirec encoders export" >&2; exit 1; }
  read -r -a shapes < "$args_file"
  echo "== $model"
  "$TRTEXEC" --onnx="$onnx" --saveEngine="$version_dir/model.plan.tmp" "${shapes[@]}" \
    "${precision[@]}" --skipInference
  mv "$version_dir/model.plan.tmp" "$version_dir/model.plan"
  built=$((built + 1))
done
[ "$built" -gt 0 ] || { echo "no exported ONNX models under $repo; run semirec encoders export" >&2; exit 1; }
echo "built $built engine(s) under $repo"
