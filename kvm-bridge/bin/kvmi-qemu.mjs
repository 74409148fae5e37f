#!/usr/bin/env node
// SPDX-License-Identifier: Apache-2.0
// Entry point of `npx kvmi-qemu`: the sources are TypeScript, loaded through tsx's ESM hooks.
import { register } from "tsx/esm/api";

register();
const { main } = await import("../src/qemu/cli.ts");
process.exit(await main(process.argv.slice(2)));
