#!/usr/bin/env bash
# Build TensorRT engines (<version>/model.plan) from the exported ONNX models, for the GPU variant
# of each model (configs/tensorrt.pbtxt; start tritonserver with --model-config-name=tensorrt).
#
#   semirec encoders export [--checkpoint DIR]   # writes <model>/1/model.onnx + trtexec_args.txt
#   semirec model export CHECKPOINT              # writes ranker/<n>/model.onnx + trtexec_args.txt
#   triton_models/build_tensorrt.sh [REPO] [--fp16] [--model NAME] [--version N] [--force]
#
# Every numbered version folder with a model.onnx is built unless its model.plan is newer than
# the ONNX (--force rebuilds). With SEMIREC_TRITON_MODEL_CONFIG=tensorrt, `semirec model export`
# builds the new ranker version's plan itself before the version appears.
# Run it on the machine (same GPU model, same TensorRT version as the serving container) that
# will serve the engines: a plan is specific to both. TensorRT >= 10 (INT64 and BOOL inputs).
# Status: not yet run on a GPU (see docs/encoders.md, docs/trainer.md).
set -euo pipefail

repo="$(cd "$(dirname "$0")" && pwd)"
precision=()
only_model=""
only_version=""
force=0
while [ $# -gt 0 ]; do
  case "$1" in
    --fp16) precision=(--fp16) ;;
    --model) only_model="$2"; shift ;;
    --version) only_version="$2"; shift ;;
    --force) force=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) repo="$(cd "$1" && pwd)" ;;
  esac
  shift
done

TRTEXEC=${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}
[ -x "$TRTEXEC" ] || { echo "trtexec not found (set TRTEXEC=/path/to/trtexec)" >&2; exit 1; }

built=0
for onnx in "$repo"/*/[0-9]*/model.onnx; do
  [ -e "$onnx" ] || continue
  version_dir="$(dirname "$onnx")"
  version="$(basename "$version_dir")"
  model="$(basename "$(dirname "$version_dir")")"
  case "$version" in *[!0-9]*) continue ;; esac
  [ -z "$only_model" ] || [ "$model" = "$only_model" ] || continue
  [ -z "$only_version" ] || [ "$version" = "$only_version" ] || continue
  [ -f "$repo/$model/configs/tensorrt.pbtxt" ] || continue
  if [ "$force" = 0 ] && [ "$version_dir/model.plan" -nt "$onnx" ]; then
    echo "== $model/$version: up to date"; continue
  fi
  args_file="$version_dir/trtexec_args.txt"
  [ -f "$args_file" ] || { echo "$model/$version: $args_file missing; re-run the export" >&2; exit 1; }
  read -r -a shapes < "$args_file"
  echo "== $model/$version"
  "$TRTEXEC" --onnx="$onnx" --saveEngine="$version_dir/model.plan.tmp" "${shapes[@]}" \
    "${precision[@]}" --skipInference
  mv "$version_dir/model.plan.tmp" "$version_dir/model.plan"
  built=$((built + 1))
done
echo "built $built engine(s) under $repo"
