#!/usr/bin/env node
// SPDX-License-Identifier: Apache-2.0
// Entry point of `npx kvmictl`: the sources are TypeScript, loaded through tsx's ESM hooks.
import { register } from "tsx/esm/api";

register();
const { main } = await import("../main.ts");
const { guardPipe } = await import("../closed-pipe.ts");
const abort = new AbortController();
// The first Ctrl-C lets a long-running command clean up (release its session); a second one exits now.
const onSignal = () => {
  if (abort.signal.aborted) process.exit(130);
  abort.abort();
};
process.on("SIGINT", onSignal);
process.on("SIGTERM", onSignal);
// A reader that stops reading (`| head`) ends the command like Ctrl-C: it releases its session and
// kvmictl exits 0 without a word (clients/cli/closed-pipe.ts).
const stdout = guardPipe(process.stdout, () => abort.abort());
const stderr = guardPipe(process.stderr, () => undefined);
const code = await main(process.argv.slice(2), {
  stdout: (text) => stdout.write(text),
  stderr: (text) => stderr.write(text),
  stderrIsTTY: process.stderr.isTTY === true,
  signal: abort.signal,
  env: process.env,
});
process.exitCode = stdout.closed ? 0 : code;
process.removeListener("SIGINT", onSignal);
process.removeListener("SIGTERM", onSignal);
