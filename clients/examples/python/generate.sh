#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Generates the Python stubs of kvmi.v1 from proto/ into OUT (default: ./gen beside this script),
# with Debian's protoc (protobuf-compiler, >= 3.15 for proto3 `optional`) and gRPC's Python plugin
# (protobuf-compiler-grpc). google/protobuf/*.proto come from libprotobuf-dev (/usr/include, which
# protoc searches by default).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
proto=$(cd "$here/../../../proto" && pwd)
out=${1:-$here/gen}
for tool in protoc grpc_python_plugin; do
  command -v "$tool" >/dev/null || { echo "generate.sh: $tool not found (apt-get install protobuf-compiler protobuf-compiler-grpc)" >&2; exit 1; }
done
[[ -e /usr/include/google/protobuf/descriptor.proto ]] || { echo "generate.sh: google/protobuf/*.proto not found (apt-get install libprotobuf-dev)" >&2; exit 1; }
mkdir -p "$out"
cd "$proto"
protoc -I. --python_out="$out" --grpc_out="$out" --plugin=protoc-gen-grpc="$(command -v grpc_python_plugin)" \
  kvmi/v1/*.proto google/api/field_behavior.proto google/rpc/status.proto google/rpc/error_details.proto
# No __init__.py: `google` must stay a namespace package shared with the runtime's google.protobuf.
