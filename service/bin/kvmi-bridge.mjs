#!/usr/bin/env node
// SPDX-License-Identifier: Apache-2.0
// Entry point of `npx kvmi-bridge`: the sources are TypeScript, loaded through tsx's ESM hooks.
import { register } from "tsx/esm/api";

register();
const { main } = await import("../src/main.ts");
process.exitCode = await main(process.argv.slice(2));
