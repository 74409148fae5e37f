#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Generates the Go stubs of kvmi.v1 from proto/ into ./gen with protoc (>= 3.15), protoc-gen-go and
# protoc-gen-go-grpc. The .proto files carry no go_package option (the API is language-neutral), so
# the import paths are given here with M mappings.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../../../proto"
module=example.com/kvmi-example/gen
maps=()
for f in kvmi/v1/*.proto; do maps+=("M$f=$module/kvmi/v1"); done
maps+=("Mgoogle/api/field_behavior.proto=google.golang.org/genproto/googleapis/api/annotations")
go_opts=$(IFS=,; echo "${maps[*]}")
mkdir -p "$here/gen"
protoc -I. --go_out="$here/gen" --go_opt=module=$module,"$go_opts" \
  --go-grpc_out="$here/gen" --go-grpc_opt=module=$module,"$go_opts" kvmi/v1/*.proto
