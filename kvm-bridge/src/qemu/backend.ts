// SPDX-License-Identifier: Apache-2.0
/**
 * `kvmi-qemu`'s core (docs/qemu-backend.md): attaches to a running QEMU through its gdbstub and
 * QMP and presents it to a KVMI tool through the same emulated kernel side and device manager as
 * kvmi-sim's guests: QEMU's handshake (uuid and name from QMP), then KVMI. The device manager
 * allows only the commands and events this guest can honour, so CHECK_COMMAND / CHECK_EVENT
 * answer EPERM for the rest, as a kernel whose QEMU disallowed them would.
 */
import { DeviceManager, type KvmiEndpoint, type UnhookOutcome } from "../emulator/device-manager.js";
import { createKvmiExitHandler } from "../emulator/kernel/exit-handler.js";
import { KvmiVm } from "../emulator/kernel/kvmi-vm.js";
import type { Logger } from "../logger.js";
import { silentLogger } from "../logger.js";
import type { Dialect } from "../wire/dialect.js";
import type { CommandOp, EventKind } from "../wire/ops.js";
import { v9 } from "../wire/dialects/v9.js";
import type { E820Entry } from "../wire/handshake.js";
import type { SocketEndpoint } from "./endpoint.js";
import { connectGdb, type GdbClient } from "./gdb-client.js";
import { readCpuidTables } from "./qemu-cpuid.js";
import { QemuGuest } from "./qemu-guest.js";
import { connectQmp, type QmpClient, type QmpEvent } from "./qmp-client.js";

/** Commands the gdbstub and QMP carry faithfully (docs/qemu-backend.md has the table and the reasons). */
export const QEMU_COMMANDS: readonly CommandOp[] = [
  "GET_VERSION", "CHECK_COMMAND", "CHECK_EVENT", "GET_VM_INFO", "CONTROL_VM_EVENTS", "READ_PHYSICAL",
  "WRITE_PHYSICAL", "GET_VCPU_INFO", "PAUSE_VCPU", "CONTROL_VCPU_EVENTS", "GET_REGISTERS", "SET_REGISTERS",
  "CONTROL_CLEANUP", "GET_MAX_GFN", "GET_MTRR_TYPE", "CONTROL_SINGLESTEP", "TRANSLATE_GVA",
  // The leaves QEMU's CPU model gives in full (qemu-cpuid.ts); others ENOENT.
  "GET_CPUID",
  // x87 and SSE state from the stub's registers (qemu-xsave.ts).
  "GET_XSAVE",
  // Protocol only, no guest involved: kvmi-v7's reply switch, which libkvmi's batches need
  // (kvmi_pause_all_vcpus). Dialects without it simply do not list it.
  "CONTROL_CMD_RESPONSE",
  // Restrictions as watchpoints over the page's kernel mappings (qemu/page-watch.ts says what holds).
  "SET_PAGE_ACCESS", "GET_PAGE_ACCESS",
];
/** Events it can raise. */
export const QEMU_EVENTS: readonly EventKind[] = ["UNHOOK", "PAUSE_VCPU", "BREAKPOINT", "SINGLESTEP", "PF"];

export interface QemuBackendOptions {
  readonly gdb: SocketEndpoint;
  readonly qmp: SocketEndpoint;
  /** The KVMI tool's socket (the bridge's KVMI listener). */
  readonly connect: KvmiEndpoint;
  /** The KVMI dialect the kernel side speaks to the tool (default v9; any of `KNOWN_DIALECTS`). */
  readonly dialect?: Dialect;
  /** Display name in the handshake; QMP's query-name when absent. */
  readonly name?: string;
  readonly secret?: Uint8Array;
  readonly reconnectMs?: number;
  readonly unhookTimeoutMs?: number;
  readonly logger?: Logger;
}

export interface QemuBackend {
  readonly uuid: string;
  readonly name: string;
  readonly guest: QemuGuest;
  readonly kernel: KvmiVm;
  readonly deviceManager: DeviceManager;
  /** The unhook flow on the operator's request (PREUNHOOK → UNHOOK → close). */
  unhook(): Promise<UnhookOutcome>;
  /** Removes tool breakpoints, lets the VM run and disconnects from QEMU (QEMU keeps running). */
  close(): Promise<void>;
}

function e820Of(ram: ReadonlyArray<{ start: bigint; end: bigint }>): E820Entry[] {
  return ram.map((range) => ({ address: range.start, length: range.end - range.start, type: 1 }));
}

/** Attaches to QEMU and starts connecting to the tool. */
export async function attachQemu(options: QemuBackendOptions): Promise<QemuBackend> {
  const log = options.logger ?? silentLogger;
  // The kernel side reads every wire fact from the dialect's table, so QEMU is offered in each one.
  const dialect = options.dialect ?? v9;
  const qmp: QmpClient = await connectQmp(options.qmp);
  let gdb: GdbClient;
  try {
    // A QEMU started from a snapshot (`-incoming`) is attached once its state has arrived.
    await qmp.waitWhileIncoming();
    gdb = await connectGdb(options.gdb);
  } catch (error) {
    qmp.close();
    throw error;
  }
  const [uuid, qmpName, ram] = await Promise.all([qmp.uuid(), qmp.name(), qmp.ramRanges()]);
  const name = options.name ?? qmpName ?? "qemu";
  const guest = new QemuGuest(gdb, qmp, ram, { logger: log });
  // A QEMU whose vCPU objects lack these properties still attaches: GET_CPUID then answers ENOENT.
  guest.cpuidTables = await readCpuidTables(qmp).catch((error: unknown) => {
    log.warn({ err: (error as Error).message }, "QEMU does not describe its CPU model over QOM: GET_CPUID answers ENOENT");
    return [];
  });
  const kernel = new KvmiVm(guest, { dialect, logger: log, features: { singlestep: true, descriptorExits: false, userspaceBreakpoints: false } });
  guest.exitHandler = createKvmiExitHandler(kernel);
  const deviceManager = new DeviceManager({
    endpoint: options.connect,
    vm: { uuid, name, maxGpa: guest.maxGfn() << 12n, e820: e820Of(ram) },
    guest: {
      stop: () => {
        guest.managerStopped = true;
        // QEMU may be going away (its exit is what stops us): a failed stop is not an error here.
        void guest.acquire().catch(() => undefined);
      },
      resume: () => {
        guest.managerStopped = false;
        guest.release();
        for (const vcpu of guest.vcpus) vcpu.notifyResume();
      },
      reset: () => undefined,
    },
    kernel,
    handshake: "e820",
    secret: options.secret,
    reconnectMs: options.reconnectMs,
    unhookTimeoutMs: options.unhookTimeoutMs,
    commands: dialect.commands.filter((c) => QEMU_COMMANDS.includes(c.op)).map((c) => c.id),
    events: dialect.events.filter((e) => QEMU_EVENTS.includes(e.kind)).map((e) => e.id),
    logger: log,
  });
  // QEMU going down or away takes the unhook flow first, as QEMU with KVMI does (kvmi-abi §2.6).
  qmp.onEvent((event: QmpEvent) => {
    if (event.event === "SHUTDOWN") void deviceManager.runAction("shutdown").catch(() => undefined);
    else if (event.event === "MIGRATION" && event.data?.["status"] === "setup") void deviceManager.runAction("migrate").catch(() => undefined);
  });
  const gone = () => void deviceManager.stop();
  qmp.onClose(gone);
  gdb.onClose(gone);
  deviceManager.start();
  guest.start();
  log.info({ uuid, name, vcpus: guest.vcpus.length, ram: ram.map((r) => `${r.start.toString(16)}-${r.end.toString(16)}`) }, "attached to QEMU");
  return {
    uuid,
    name,
    guest,
    kernel,
    deviceManager,
    unhook: () => deviceManager.runAction("pause").then(async (outcome) => {
      deviceManager.resume();
      return outcome;
    }),
    async close() {
      await deviceManager.stop();
      await guest.clearBreakpoints().catch(() => undefined);
      await gdb.detach();
      qmp.close();
    },
  };
}
