#!/usr/bin/env node
// SPDX-License-Identifier: Apache-2.0
// Entry point of `npx kvmi-relay`: the sources are TypeScript, loaded through tsx's ESM hooks.
import { register } from "tsx/esm/api";

register();
const { main } = await import("../main.ts");
const abort = new AbortController();
const onSignal = () => {
  if (abort.signal.aborted) process.exit(130);
  abort.abort();
};
process.on("SIGINT", onSignal);
process.on("SIGTERM", onSignal);
process.exitCode = await main(process.argv.slice(2), {
  stderr: (text) => process.stderr.write(text),
  signal: abort.signal,
  env: process.env,
});
process.removeListener("SIGINT", onSignal);
process.removeListener("SIGTERM", onSignal);
