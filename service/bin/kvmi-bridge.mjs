#!/usr/bin/env node
// SPDX-License-Identifier: Apache-2.0
// Entry point of `npx kvmi-bridge`: the sources are TypeScript, loaded through tsx's ESM hooks.
// `kvmi-bridge health` (the container health probe) loads only its own module, not the bridge.
import { register } from "tsx/esm/api";

register();
if (process.argv[2] === "health") {
  const { healthMain } = await import("../src/probe/health-probe.ts");
  process.exitCode = await healthMain(process.argv.slice(3), process.env);
} else {
  const { main } = await import("../src/main.ts");
  // Exit explicitly once main() is done: after a graceful shutdown, a frozen client's idle HTTP/2
  // connection must not keep the process alive until the orchestrator kills it.
  process.exit(await main(process.argv.slice(2)));
}
