// SPDX-License-Identifier: Apache-2.0
/**
 * `kvmictl gdb <vm> --listen HOST:PORT`: a GDB remote stub for one VM (the SDK's `serveGdb`). It
 * runs until Ctrl-C (or, with `--once`, until the first gdb session ends); each gdb connection
 * stops the guest while gdb is attached and leaves it running, unchanged, when gdb goes away.
 */
import { serveGdb } from "@kvmi/clients";
import { parseIndex, UsageError } from "./args.js";
import type { CliContext } from "./context.js";
import { waitOrAbort } from "./context.js";

/** Options of `kvmictl gdb`. */
export interface GdbCommandOptions {
  readonly listen?: string;
  readonly once?: boolean;
  readonly eventDeadline?: string;
}

/** Splits `host:port`, `[v6]:port` or `:port`. */
export function parseListen(text: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(text.trim());
  if (m === null) throw new UsageError(`--listen: "${text}" is not host:port (e.g. 127.0.0.1:1234)`);
  const port = Number(m[3]);
  if (port > 65535) throw new UsageError(`--listen: port ${port} is out of range`);
  return { host: m[1] ?? (m[2] || "127.0.0.1"), port };
}

/** `gdb <vm>`. */
export async function gdb(ctx: CliContext, ref: string, options: GdbCommandOptions): Promise<number> {
  const { host, port } = parseListen(options.listen ?? "127.0.0.1:1234");
  const eventDeadlineMs = options.eventDeadline === undefined ? undefined : parseIndex(options.eventDeadline, "--event-deadline");
  if (eventDeadlineMs !== undefined && (eventDeadlineMs < 10 || eventDeadlineMs > 60_000)) throw new UsageError("--event-deadline: 10..60000 ms");
  const vm = await ctx.resolveVm(ref);
  const gateway = await serveGdb(ctx.client, vm.uuid, { host, port, ...(eventDeadlineMs !== undefined && { eventDeadlineMs }), log: (line) => ctx.err(`kvmictl gdb: ${line}`) });
  const where = host.includes(":") ? `[${gateway.host}]:${gateway.port}` : `${gateway.host}:${gateway.port}`;
  if (ctx.json) ctx.out(JSON.stringify({ vm: vm.name, listen: where }));
  ctx.err(`gdb gateway for ${vm.name} (${vm.displayName || "no name"}) on ${where}; connect with: gdb -ex 'target remote ${where}'`);
  try {
    if (options.once) {
      const ended = await Promise.race([gateway.nextSessionEnd(), waitOrAbort(undefined, ctx.io.signal)]);
      // The refusal was logged (e.g. another controller holds the VM).
      if (ended !== undefined && !ended.attached) return 1;
    } else await waitOrAbort(undefined, ctx.io.signal);
  } finally {
    await gateway.close();
  }
  return 0;
}
