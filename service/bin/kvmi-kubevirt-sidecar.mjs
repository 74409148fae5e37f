#!/usr/bin/env node
// SPDX-License-Identifier: Apache-2.0
// Entry point of the KubeVirt hook sidecar (kvmi-bridge for one VM plus KubeVirt's hook protocol):
// the sources are TypeScript, loaded through tsx's ESM hooks.
import { register } from "tsx/esm/api";

register();
const { main } = await import("../src/kubevirt/sidecar.ts");
process.exitCode = await main(process.argv.slice(2));
