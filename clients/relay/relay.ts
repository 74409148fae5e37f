// SPDX-License-Identifier: Apache-2.0
/**
 * kvmi-relay: an unmodified libkvmi or LibVMI tool introspects a remote VM through the bridge
 * (docs/decisions/0100-kvmi-relay.md). The relay plays QEMU and the kernel for the tool on its
 * UNIX socket and turns every KVMI message into kvmi.v1 traffic on ONE Session:
 * - each tool command is one Session command, answered with the tool's seq, re-encoded with the
 *   tool's dialect table, in one write; commands the tool pipelines stay in flight together;
 * - kvmi-v7's reply switch (CONTROL_CMD_RESPONSE) is honoured here: suppressed replies are not
 *   sent, and the reply that turns them back on waits for the suppressed commands, as the kernel's
 *   receive thread runs them in order (docs/protocol/kvmi-v7.md);
 * - each kvmi.v1 event becomes the dialect's event message under the relay's own seq, and the tool's
 *   reply to it becomes an EventReply;
 * - the tool closes -> the VM is released; the bridge's unhook notice -> the dialect's UNHOOK event;
 *   the session ends otherwise -> the tool's socket is closed, unless `reconnect` re-attaches.
 */
import type net from "node:net";
import { connectTool } from "./tool-link.js";
import { RelayConnection } from "./relay-connection.js";
import type { RelayLogger, RelayOptions, RelayResult } from "./relay-options.js";

export type { RelayEnd, RelayLogger, RelayOptions, RelayResult } from "./relay-options.js";
export { MAX_OUTSTANDING_COMMANDS } from "./relay-connection.js";

const SILENT: RelayLogger = { info: () => undefined, warn: () => undefined };

/**
 * Serves one tool connection until it ends. Resolves (never rejects after the handshake) with why.
 * @throws Error when the VM cannot be attached or the tool's socket cannot be reached.
 */
export async function runRelay(options: RelayOptions): Promise<RelayResult> {
  const log = options.log ?? SILENT;
  const vm = await options.client.resolveVm(options.vm);
  const attach = () =>
    options.client.attach(vm.uuid, {
      role: options.role ?? "controller",
      ...(options.eventDeadlineMs !== undefined && { eventDeadlineMs: options.eventDeadlineMs }),
      ...(options.signal && { signal: options.signal }),
    });
  const session = await attach();
  let socket: net.Socket;
  try {
    socket = await connectTool(options.toolPath, session.vm ?? vm, options.secret);
  } catch (error) {
    await session.release().catch(() => undefined);
    throw error;
  }
  log.info("tool connected", { vm: vm.uuid, dialect: options.dialect.name, role: options.role ?? "controller" });
  return new RelayConnection(options, log, socket, session, attach).run();
}
