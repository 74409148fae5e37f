#!/usr/bin/env node
// SPDX-License-Identifier: Apache-2.0
// Entry point of `npx kvmi-sim`: the sources are TypeScript, loaded through tsx's ESM hooks.
import { register } from "tsx/esm/api";

register();
const { main } = await import("../src/emulator/cli.ts");
// Exit explicitly: a VM still waiting to reconnect must not keep the process alive after stop.
process.exit(await main(process.argv.slice(2)));
