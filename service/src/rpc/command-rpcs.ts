// SPDX-License-Identifier: Apache-2.0
/**
 * The 25 unary command RPCs, one per v9 command (kvmi-abi §4), all driven by the mapping table:
 * parse and check the request (INVALID_ARGUMENT before the socket), resolve the VM and vCPU
 * (NOT_FOUND / INVALID_ARGUMENT), run the command on the VM's host, map the reply.
 */
import type { ServerUnaryCall } from "@grpc/grpc-js";
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import { checkVcpuIndex } from "../mapping/bridge-error.js";
import { COMMAND_MAPPINGS, responseFromWire } from "../mapping/commands.js";
import type { AnyCommandMapping, CommandMapping } from "../mapping/commands.js";
import { DIALECT_COMMAND_MAPPINGS, dialectResponseFromWire } from "../mapping/dialect-commands.js";
import type { AnyDialectCommandMapping, DialectCommandMapping } from "../mapping/dialect-commands.js";
import type { CancelSignal } from "@kvmi/kvm-bridge";
import type { CommandOp } from "@kvmi/kvm-bridge/wire";
import { parseVcpuName, parseVmName } from "../mapping/resource-names.js";
import type { ErrorContext } from "../mapping/status.js";
import { auditCommand } from "../audit/audit-records.js";
import type { Principal } from "../auth/identity.js";
import { MUTATING_COMMANDS } from "../mapping/command-facts.js";
import { ownerOf, principalOf } from "./principals.js";
import type { RpcDeps } from "./call-context.js";
import { cancellationOf, callTimeoutMs, sessionIdOf, unary } from "./call-context.js";

/** Who runs a command and with which limits. */
export interface CommandCaller {
  readonly sessionId?: string | undefined;
  /** The caller (audit) and its identity key (what a controller's session is bound to). */
  readonly principal?: Principal;
  readonly owner?: string | undefined;
  readonly timeoutMs: number;
  readonly signal?: CancelSignal;
}

/** Runs one mapped command for a client; shared by the unary RPCs and the session stream. */
export async function runCommand(deps: RpcDeps, mapping: AnyCommandMapping, request: unknown, caller: CommandCaller): Promise<unknown> {
  const entry = mapping as unknown as CommandMapping<never, DescMessage, DescMessage>;
  // Kernel limits are the VM's dialect's: resolved (NOT_FOUND for an unknown VM) when a check needs them.
  const wire = entry.toWire(request as MessageShape<DescMessage>, (vm) => deps.hosts.require(vm).channel.dialect.limits);
  const host = deps.hosts.require(wire.vm);
  if (wire.vcpu !== undefined) checkVcpuIndex(wire.vm, wire.vcpu, host.record.vcpuCount);
  if (!MUTATING_COMMANDS.has(entry.command)) return responseFromWire(entry, await host.command(entry.command, wire.body, wire.vcpu, caller));
  // Every command that changes the guest is audited with its outcome (who, what, where, digest).
  let reply;
  try {
    reply = await host.command(entry.command, wire.body, wire.vcpu, caller);
  } catch (err) {
    auditCommand(deps.audit, { command: entry.command, vm: wire.vm, vcpu: wire.vcpu, request, caller, error: err });
    throw err;
  }
  auditCommand(deps.audit, { command: entry.command, vm: wire.vm, vcpu: wire.vcpu, request, caller });
  return responseFromWire(entry, reply);
}

/**
 * Runs a command v9 lacks (mapping/dialect-commands.ts) for a client: read-only, so no controller
 * check and no audit record; NOT_IN_DIALECT when the VM's dialect lacks it.
 */
export async function runDialectCommand(deps: RpcDeps, mapping: AnyDialectCommandMapping, request: unknown, caller: CommandCaller): Promise<unknown> {
  const entry = mapping as unknown as DialectCommandMapping<CommandOp, DescMessage, DescMessage>;
  const wire = entry.toWire(request as MessageShape<DescMessage>);
  const host = deps.hosts.require(wire.vm);
  if (wire.vcpu !== undefined) checkVcpuIndex(wire.vm, wire.vcpu, host.record.vcpuCount);
  const reply = await host.commandOp(entry.op, wire.body, wire.vcpu, caller);
  return dialectResponseFromWire(entry, reply, wire.body);
}

/**
 * What an error of a command is about, for the ErrorInfo metadata (`command`, `vm`, `vcpu`) of
 * errors raised before the command reached a VM (argument checks, unknown VM or vCPU). Best effort:
 * a name that does not parse contributes nothing (that name is then the error).
 */
export function commandErrorContext(mapping: { readonly scope: "vm" | "vcpu"; readonly command: string }, request: unknown): ErrorContext {
  const { vm, name } = request as { vm?: string; name?: string };
  const attempt = <T>(parse: () => T): T | undefined => {
    try {
      return parse();
    } catch {
      return undefined;
    }
  };
  if (mapping.scope === "vcpu") {
    const ref = attempt(() => parseVcpuName(name ?? "", "name"));
    if (ref !== undefined) return { command: mapping.command, vm: ref.vm, vcpu: ref.vcpu };
    // A bad vCPU part still names a VM.
    const uuid = attempt(() => parseVmName((name ?? "").split("/vcpus/")[0]!, "name"));
    return { command: mapping.command, ...(uuid !== undefined && { vm: uuid }) };
  }
  const uuid = attempt(() => parseVmName(vm ?? "", "vm"));
  return { command: mapping.command, ...(uuid !== undefined && { vm: uuid }) };
}

/** The unary handlers, keyed by method local name (`readPhysicalMemory`). */
export function commandHandlers(deps: RpcDeps): Record<string, ReturnType<typeof unary>> {
  const handlers: Record<string, ReturnType<typeof unary>> = {};
  for (const mapping of Object.values<AnyCommandMapping>(COMMAND_MAPPINGS)) {
    handlers[mapping.method] = unary(deps, mapping.method, (call: ServerUnaryCall<unknown, unknown>) => {
      const principal = principalOf(call);
      return runCommand(deps, mapping, call.request, {
        sessionId: sessionIdOf(call.metadata),
        principal,
        owner: ownerOf(principal),
        timeoutMs: callTimeoutMs(call, deps.requestTimeoutMs),
        signal: cancellationOf(call),
      });
    },
      (request) => commandErrorContext(mapping, request),
    );
  }
  for (const mapping of Object.values<AnyDialectCommandMapping>(DIALECT_COMMAND_MAPPINGS)) {
    handlers[mapping.method] = unary(
      deps,
      mapping.method,
      (call: ServerUnaryCall<unknown, unknown>) =>
        runDialectCommand(deps, mapping, call.request, { timeoutMs: callTimeoutMs(call, deps.requestTimeoutMs), signal: cancellationOf(call) }),
      (request) => commandErrorContext(mapping, request),
    );
  }
  return handlers;
}
