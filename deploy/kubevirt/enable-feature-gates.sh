#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Turns KubeVirt feature gates on without dropping the ones already on, whether or not the KubeVirt
# CR has spec.configuration.developerConfiguration.featureGates yet (a JSON patch that appends to
# the list fails when the list is missing; a merge patch would replace the whole list).
#   deploy/kubevirt/enable-feature-gates.sh Sidecar            # hook sidecars (every version)
#   deploy/kubevirt/enable-feature-gates.sh Plugins            # the Plugin API (v1.9+)
# KUBECTL, KUBEVIRT_NAMESPACE (kubevirt) and KUBEVIRT_NAME (kubevirt) can be overridden.
set -eu
KUBECTL=${KUBECTL:-kubectl}
NS=${KUBEVIRT_NAMESPACE:-kubevirt}
NAME=${KUBEVIRT_NAME:-kubevirt}
GATES_PATH=/spec/configuration/developerConfiguration/featureGates

# An empty object in a merge patch creates what is missing on the way and changes nothing else.
$KUBECTL -n "$NS" patch kubevirt "$NAME" --type merge -p '{"spec":{"configuration":{"developerConfiguration":{}}}}' >/dev/null
for gate in "$@"; do
  current=$($KUBECTL -n "$NS" get kubevirt "$NAME" -o jsonpath='{.spec.configuration.developerConfiguration.featureGates}')
  case "$current" in
    *"\"$gate\""*) echo "$gate: already on"; continue ;;
  esac
  if [ -z "$current" ]; then
    $KUBECTL -n "$NS" patch kubevirt "$NAME" --type json -p "[{\"op\":\"add\",\"path\":\"$GATES_PATH\",\"value\":[\"$gate\"]}]" >/dev/null
  else
    $KUBECTL -n "$NS" patch kubevirt "$NAME" --type json -p "[{\"op\":\"add\",\"path\":\"$GATES_PATH/-\",\"value\":\"$gate\"}]" >/dev/null
  fi
  echo "$gate: on"
done
