#!/usr/bin/env bash
# Regenerate the Python code of the protobuf contract next to the .proto files.
# With --check, regenerate into a scratch folder and fail if the committed code differs.
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python}
out=.
if [[ "${1:-}" == "--check" ]]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
"$python" -m grpc_tools.protoc -I . \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  gradwire/v1/gradwire.proto
if [[ "${1:-}" == "--check" ]]; then
  for f in gradwire_pb2.py gradwire_pb2.pyi gradwire_pb2_grpc.py; do
    if ! diff -q "$out/gradwire/v1/$f" "gradwire/v1/$f" >/dev/null; then
      echo "proto/gradwire/v1/$f differs from what gradwire.proto generates: run 'make proto'" >&2
      exit 1
    fi
  done
  echo "generated code matches proto/gradwire/v1/gradwire.proto"
fi
