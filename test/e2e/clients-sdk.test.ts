// SPDX-License-Identifier: Apache-2.0
// The SDK (@kvmi/clients) against a real bridge and emulated VMs: every command method over both
// transports (unary RPCs and the session stream), events with each reply kind, typed errors with
// their details, retries, and cancellation that never leaves a promise hanging.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  CancelledError,
  Command,
  connect,
  CpuMode,
  FailedPreconditionError,
  InvalidArgumentError,
  MemoryHoleError,
  MtrrType,
  NotFoundError,
  PAGE_ACCESS,
  PermissionDeniedError,
  SessionClosedError,
  State,
  UnavailableError,
  VmChangeType,
} from "@kvmi/clients";
import type { BridgeClient, Session, SessionItem, VcpuEvent, VmCommands, VmHandle } from "@kvmi/clients";
import { guestModel } from "@kvmi/kvm-bridge/emulator";
import type { EmulatedVm } from "@kvmi/kvm-bridge/emulator";
import { startClientsBridge } from "../support/clients-harness.js";
import type { ClientsBridge } from "../support/clients-harness.js";

const { SYSCALL_ENTRY_GVA, INIT_TASK_GVA, LINUX_BANNER_GVA, DIRECT_MAP_GVA } = guestModel;
const manual = { tickIntervalMs: 0, hypercallEveryTicks: 0 };
const MSR_EFER = 0xc0000080;
const MSR_LSTAR = 0xc0000082;

let bridge: ClientsBridge;
let client: BridgeClient;
let main: EmulatedVm;
let crashVm: EmulatedVm;
let idleVm: EmulatedVm;
let releaseVm: EmulatedVm;

beforeAll(async () => {
  bridge = await startClientsBridge({
    vms: [
      { name: "sdk-main", vcpus: 2, workload: manual, seed: 3 },
      { name: "sdk-crash", vcpus: 1, workload: manual },
      { name: "sdk-idle", vcpus: 2, workload: manual },
      { name: "sdk-release", vcpus: 1, workload: manual },
    ],
  });
  client = bridge.client;
  [main, crashVm, idleVm, releaseVm] = bridge.vms as [EmulatedVm, EmulatedVm, EmulatedVm, EmulatedVm];
  await main.guest.workload!.step(); // starts vCPU 1
}, 30_000);

afterAll(async () => {
  await bridge?.stop();
});

/** Settles within `ms` or fails the test: nothing may hang. */
function within<T>(promise: Promise<T>, ms = 5000): Promise<T> {
  return Promise.race([promise, new Promise<T>((_, reject) => setTimeout(() => reject(new Error(`still pending after ${ms} ms`)), ms))]);
}

/** Handles session items while `work` runs, then until `done()` says so. */
async function handleWhile(session: Session, work: Promise<unknown>, handler: (item: SessionItem) => Promise<boolean | void>): Promise<void> {
  const stop = new AbortController();
  let finished = false;
  void work.finally(() => (finished = true));
  const loop = (async () => {
    try {
      for await (const item of session.events({ signal: stop.signal })) {
        if ((await handler(item)) === true) return;
      }
    } catch (err) {
      if (!(err instanceof CancelledError)) throw err;
    }
  })();
  await work;
  // Let items already on the way arrive, then stop.
  await new Promise((r) => setTimeout(r, 50));
  if (finished) stop.abort();
  await loop;
}

describe("registry", () => {
  it("lists every VM across pages, gets one and resolves names", async () => {
    const all = await client.listVms({ pageSize: 1 });
    expect(all.map((v) => v.displayName).sort()).toEqual(["sdk-crash", "sdk-idle", "sdk-main", "sdk-release"]);
    expect(all.every((v) => v.state === State.HOOKED)).toBe(true);
    const vm = await client.getVm(main.uuid);
    expect(vm).toMatchObject({ name: `vms/${main.uuid}`, uuid: main.uuid, displayName: "sdk-main", vcpuCount: 2, dialect: "v9" });
    expect((await client.getVm(`vms/${main.uuid.toUpperCase()}`)).uuid).toBe(main.uuid);
    expect((await client.resolveVm("sdk-main")).uuid).toBe(main.uuid);
    await expect(client.resolveVm("nope")).rejects.toBeInstanceOf(NotFoundError);
    const missing = await client.getVm("00000000-0000-4000-8000-000000000000").catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(NotFoundError);
    expect(missing).toMatchObject({ reason: "VM_NOT_FOUND", domain: "kvmi.v1.IntrospectionService", vm: "00000000-0000-4000-8000-000000000000" });
    expect((missing as NotFoundError).details.resourceInfo).toMatchObject({ resourceType: "kvmi.v1.Vm", resourceName: "vms/00000000-0000-4000-8000-000000000000" });
    expect(() => client.vm("not-a-uuid")).toThrow(InvalidArgumentError);
  });

  it("watches: existing VMs first, then changes, until the signal fires", async () => {
    const stop = new AbortController();
    const seen: Array<[VmChangeType, string, boolean]> = [];
    const watching = (async () => {
      for await (const change of client.watchVms({ vm: idleVm.uuid, signal: stop.signal })) {
        seen.push([change.type, change.vm!.uuid, change.vm!.controllerAttached]);
        if (change.type === VmChangeType.EXISTING) {
          const session = await client.attach(idleVm.uuid, { role: "controller" });
          await session.release();
        }
        if (seen.length >= 3) stop.abort();
      }
    })();
    await expect(within(watching)).rejects.toBeInstanceOf(CancelledError);
    expect(seen[0]).toEqual([VmChangeType.EXISTING, idleVm.uuid, false]);
    expect(seen.slice(1)).toContainEqual([VmChangeType.STATE_CHANGED, idleVm.uuid, true]);
  });
});

/** Runs the read-only command methods on `vm` (a unary handle or a session). */
async function readOnlyCommands(vm: VmCommands): Promise<void> {
  expect(await vm.getVersion()).toEqual({ version: 1, singlestep: true, maxMsgSize: 8184 });
  await vm.checkCommand(Command.VM_READ_PHYSICAL);
  await vm.checkEvent("cr");
  expect(await vm.getVmInfo()).toEqual({ vcpuCount: 2 });
  const maxGfn = await vm.getMaxGfn();
  expect(maxGfn).toBe(BigInt(main.guest.memory.maxGfn()));
  expect((await vm.getVcpuInfo(1)).tscSpeed).toBe(2_400_000_000n);
  const regs = await vm.getRegisters(0, { msrs: [MSR_EFER, MSR_LSTAR] });
  expect(regs.mode).toBe(CpuMode.BITS_64);
  expect(regs.msrs.get(MSR_LSTAR)).toBe(SYSCALL_ENTRY_GVA);
  expect(regs.sregs.efer & 0x500n).toBe(0x500n); // LME | LMA
  const leaf0 = await vm.getCpuid(0, 0);
  expect(leaf0.eax).toBeGreaterThan(0);
  expect(await vm.getXcr(0)).toBe(main.guest.vcpus[0]!.state.xsave.xcr0);
  expect((await vm.getXsave(1)).length).toBe(4096);
  expect(await vm.getMtrrType(0, 0x1000n)).toEqual({ type: MtrrType.WRITE_BACK, rawType: 6 });
  const taskGpa = await vm.translateGva(0, INIT_TASK_GVA);
  expect(taskGpa).toBeDefined();
  expect(await vm.translateGva(0, 0x1000n)).toBeUndefined();
  // A software walk from CR3 agrees with the vCPU's translation.
  expect(await vm.translate({ cr3: regs.sregs.cr3 }, INIT_TASK_GVA)).toBe(taskGpa);
  expect(await vm.translate({ cr3: regs.sregs.cr3 }, 0x1000n)).toBeUndefined();
  // Physical page reads, any length across pages, and virtual reads that cross pages.
  const page = await vm.readPhysicalMemory(taskGpa!, 0x100);
  expect(new TextDecoder().decode(page.subarray(0x40, 0x49))).toBe("swapper/0");
  const span = await vm.readPhysical(taskGpa! - 8n, 24);
  expect([...span.subarray(8)]).toEqual([...page.subarray(0, 16)]);
  const banner = await vm.readVirtual(0, LINUX_BANNER_GVA - 10n, 40);
  expect(new TextDecoder().decode(banner.subarray(10, 23))).toBe("Linux version");
  const viaCr3 = await vm.readVirtual({ cr3: regs.sregs.cr3 }, LINUX_BANNER_GVA - 10n, 40);
  expect(viaCr3).toEqual(banner);
  const crossing = await vm.readVirtual(1, DIRECT_MAP_GVA + 0x1ff0n, 0x2020);
  expect(crossing).toEqual(await vm.readPhysical(0x1ff0n, 0x2020));
  const [ok, unmapped] = await vm.batchReadMemory([
    { address: INIT_TASK_GVA, length: 16, via: 0 },
    { address: 0x1000n, length: 8192, via: 0 },
  ]);
  expect(ok).toMatchObject({ ok: true, holes: [] });
  expect(unmapped).toMatchObject({ ok: true, holes: [{ address: 0x1000n, length: 8192n, reason: "notMapped" }] });
}

describe("command methods over unary RPCs", () => {
  it("runs every read-only command", async () => {
    await readOnlyCommands(client.vm(main.uuid));
  });

  it("reads more than one batch and reports holes as MemoryHoleError with the data read", async () => {
    const vm = client.vm(main.uuid);
    const big = await vm.readPhysical(0x100000n, 5 * 1024 * 1024); // above the legacy hole at 0xa0000
    expect(big.length).toBe(5 * 1024 * 1024);
    expect(big.subarray(0x301000, 0x301100)).toEqual(await vm.readPhysicalMemory(0x401000n, 0x100));
    const end = (await vm.getMaxGfn()) * 4096n;
    const err = await vm.readPhysical(end - 16n, 32).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MemoryHoleError);
    expect((err as MemoryHoleError).holes).toEqual([{ address: end, length: 16n, reason: "notPresent" }]);
    expect((err as MemoryHoleError).data.length).toBe(32);
    await expect(vm.readVirtual(0, 0x1000n, 4)).rejects.toBeInstanceOf(MemoryHoleError);
  });

  it("refuses mutating commands without the controller's session id, and runs them with it", async () => {
    const vm = client.vm(main.uuid);
    const denied = await vm.controlCleanup(true).catch((e: unknown) => e);
    expect(denied).toBeInstanceOf(PermissionDeniedError);
    expect(denied).toMatchObject({ reason: "NOT_CONTROLLER", command: "KVMI_VM_CONTROL_CLEANUP", vm: main.uuid });
    const session = await client.attach(main.uuid, { role: "controller" });
    try {
      const asController: VmHandle = client.vm(main.uuid, { sessionId: session.sessionId });
      await mutatingCommands(asController, session);
    } finally {
      await session.release();
    }
  });

  it("maps kernel errors to typed errors with their details", async () => {
    const vm = client.vm(main.uuid);
    const bad = await vm.readPhysicalMemory(0xff0n, 32).catch((e: unknown) => e);
    expect(bad).toBeInstanceOf(InvalidArgumentError);
    expect(bad).toMatchObject({ code: 3, codeName: "INVALID_ARGUMENT", command: "KVMI_VM_READ_PHYSICAL", vm: main.uuid });
    expect((bad as InvalidArgumentError).details.fieldViolations[0]?.field).toBe("size");
    const leaf = await vm.getCpuid(0, 0x4fff_0000).catch((e: unknown) => e);
    expect(leaf).toBeInstanceOf(NotFoundError);
    expect(leaf).toMatchObject({ reason: "KVMI_NOT_FOUND", errno: 2, errnoName: "KVM_ENOENT", command: "KVMI_VCPU_GET_CPUID", vcpu: 0 });
    expect((leaf as NotFoundError).details.resourceInfo?.resourceType).toBe("CPUID leaf");
    const vcpu = await vm.getRegisters(7).catch((e: unknown) => e);
    expect(vcpu).toMatchObject({ name: "InvalidArgumentError", reason: "VCPU_NOT_FOUND" });
    expect((vcpu as InvalidArgumentError).details.fieldViolations).toEqual([{ field: "name", description: expect.stringContaining("valid indexes are 0..1") }]);
  });

  it("retries idempotent methods on UNAVAILABLE honouring RetryInfo, and never a repeated-effect one", async () => {
    // vCPU 1 of an idle guest is not started yet: the kernel answers KVM_EAGAIN.
    const vm = client.vm(idleVm.uuid);
    const started = performance.now();
    const err = await vm.getRegisters(1).catch((e: unknown) => e);
    const elapsed = performance.now() - started;
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err).toMatchObject({ reason: "KVMI_TRY_AGAIN", errnoName: "KVM_EAGAIN" });
    expect((err as UnavailableError).details.retryDelayMs).toBe(100);
    expect(elapsed).toBeGreaterThanOrEqual(3 * 100 - 5); // 4 attempts, ≥ 100 ms apart
    // With a 1 s backoff, a retried call takes seconds: an idempotent change (GUEST_EFFECT_IDEMPOTENT)
    // is retried, an exception injection (GUEST_EFFECT_REPEATED) fails at once.
    const slow = connect({ target: bridge.target, retry: { maxAttempts: 2, initialBackoffMs: 1000, maxBackoffMs: 1000, jitter: 0 } });
    const session = await slow.attach(idleVm.uuid, { role: "controller" });
    try {
      const t0 = performance.now();
      await expect(session.controlSingleStep(1, true)).rejects.toBeInstanceOf(UnavailableError);
      expect(performance.now() - t0).toBeGreaterThanOrEqual(1000 - 5);
      const t1 = performance.now();
      await expect(session.injectException(1, { vector: 3 })).rejects.toBeInstanceOf(UnavailableError);
      expect(performance.now() - t1).toBeLessThan(900);
    } finally {
      await session.release();
      slow.close();
    }
  });

  it("cancels unary calls and dumps with an AbortSignal", async () => {
    const vm = client.vm(main.uuid);
    const aborted = new AbortController();
    aborted.abort();
    await expect(vm.getVersion({ signal: aborted.signal })).rejects.toBeInstanceOf(CancelledError);
    const stop = new AbortController();
    const reading = vm.readPhysical(0n, 3 * 1024 * 1024, { signal: stop.signal });
    stop.abort();
    await expect(within(reading)).rejects.toBeInstanceOf(CancelledError);
    const dumpStop = new AbortController();
    const chunks: bigint[] = [];
    const dumping = (async () => {
      for await (const chunk of vm.dump({ chunkSize: 64 * 1024, signal: dumpStop.signal })) {
        chunks.push(chunk.gpa);
        if (chunks.length === 2) dumpStop.abort();
      }
    })();
    await expect(within(dumping)).rejects.toBeInstanceOf(CancelledError);
    expect(chunks.length).toBeGreaterThanOrEqual(2);
  });

  it("dumps memory in chunks with progress and holes matching direct reads", async () => {
    const vm = client.vm(main.uuid);
    const end = (await vm.getMaxGfn()) * 4096n;
    const progress: bigint[] = [];
    const image = new Uint8Array(256 * 1024);
    let holeBytes = 0n;
    for await (const chunk of vm.dump({ start: end - 128n * 1024n, length: 256n * 1024n, chunkSize: 32 * 1024, onProgress: (done) => progress.push(done) })) {
      image.set(chunk.data, Number(chunk.gpa - (end - 128n * 1024n)));
      for (const h of chunk.holes) holeBytes += h.length;
      expect(chunk.bytesTotal).toBe(256n * 1024n);
    }
    expect(progress.at(-1)).toBe(256n * 1024n);
    expect([...progress]).toEqual([...progress].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)));
    expect(holeBytes).toBe(128n * 1024n);
    expect(image.subarray(0, 128 * 1024)).toEqual(await vm.readPhysical(end - 128n * 1024n, 128 * 1024));
    await expect(vm.dump({ start: 1n }).next()).rejects.toBeInstanceOf(InvalidArgumentError);
  });
});

/** The mutating commands, on `vm` (which must act as the controller of `session`). */
async function mutatingCommands(vm: VmCommands, session: Session): Promise<void> {
  const workload = main.guest.workload!;
  await vm.controlCleanup(true);
  await vm.controlCleanup(false);
  await vm.controlVmEvents("unhook", false);
  await vm.controlVmEvents("unhook", true);
  // A scratch page in the direct map: write, read back, restore.
  const gpa = 0x7000n;
  const before = await vm.readPhysical(gpa + 4090n, 12);
  const pattern = Uint8Array.from({ length: 12 }, (_, i) => 0xa0 + i);
  await vm.writePhysical(gpa + 4090n, pattern); // crosses a page boundary
  expect(await vm.readPhysical(gpa + 4090n, 12)).toEqual(pattern);
  await vm.writeVirtual(0, DIRECT_MAP_GVA + gpa + 4090n, before);
  expect(await vm.readPhysical(gpa + 4090n, 12)).toEqual(before);
  await vm.writePhysicalMemory(gpa, Uint8Array.of(1, 2, 3));
  await vm.writeVirtual({ cr3: (await vm.getRegisters(0)).sregs.cr3 }, DIRECT_MAP_GVA + gpa, before.subarray(0, 3));
  await expect(vm.writeVirtual(0, 0x1000n, Uint8Array.of(1))).rejects.toBeInstanceOf(MemoryHoleError);
  await vm.setPageAccess([{ gpa, access: PAGE_ACCESS.R | PAGE_ACCESS.X }]);
  await vm.setPageAccess([{ gpa, access: PAGE_ACCESS.RWX }]);
  await vm.controlMsr(0, MSR_LSTAR, true);
  await vm.controlMsr(0, MSR_LSTAR, false);
  await vm.setXsave(1, await vm.getXsave(1));
  await expect(vm.controlCr(0, 2 as never, true)).rejects.toBeInstanceOf(InvalidArgumentError);
  // SET_REGISTERS outside an event is refused; inside one it works (see the event tests).
  const notPending = await vm.setRegisters(0, (await vm.getRegisters(0)).regs).catch((e: unknown) => e);
  expect(notPending).toBeInstanceOf(FailedPreconditionError);
  expect(notPending).toMatchObject({ reason: "KVMI_NO_EVENT_PENDING" });
  // CR3 writes: enable, see one (blocked with new_val = old value), disable.
  await vm.controlCr(0, 3, true);
  await vm.controlVcpuEvents(0, "cr", true);
  const start = workload.groundTruth().cr3Switches.length;
  let blocked = 0;
  await handleWhile(session, workload.step(), async (item) => {
    if (item.kind !== "event") return;
    if (item.type === "cr") {
      blocked++;
      await item.continue({ newVal: item.oldValue });
    } else await item.continue();
  });
  await vm.controlVcpuEvents(0, "cr", false);
  await vm.controlCr(0, 3, false);
  const switches = workload.groundTruth().cr3Switches.slice(start).filter((s) => s.vcpu === 0);
  expect(blocked).toBe(switches.length);
  expect(switches.every((s) => s.loadedCr3 !== s.cr3)).toBe(true);
  await workload.runTicks(2); // the scheduler carries on
}

describe("sessions", () => {
  it("runs every command over the stream and answers events with each reply kind", async () => {
    const workload = main.guest.workload!;
    const session = await client.attach(main.uuid, { role: "controller", eventDeadlineMs: 3000 });
    expect(session).toMatchObject({ role: "controller", eventDeadlineMs: 3000, maxInflightCommands: 64 });
    expect(session.vm.uuid).toBe(main.uuid);
    try {
      await readOnlyCommands(session);
      await mutatingCommands(session, session);

      // PAUSE_VCPU → continue.
      await session.pauseVcpu(1, { wait: true });
      const paused: VcpuEvent[] = [];
      await handleWhile(session, Promise.resolve(), async (item) => {
        if (item.kind === "event") {
          paused.push(item);
          await item.continue();
          return item.type === "pauseVcpu";
        }
      });
      expect(paused.map((e) => [e.type, e.vcpu])).toContainEqual(["pauseVcpu", 1]);
      expect(paused[0]!.replyDeadline!.getTime()).toBeGreaterThan(Date.now());
      expect("retry" in paused[0]!).toBe(false); // PAUSE_VCPU accepts CONTINUE and CRASH only

      // BREAKPOINT → lift the INT3 and RETRY (with the registers set): the syscall re-executes and completes.
      const entryGpa = (await session.translate(0, SYSCALL_ENTRY_GVA))!;
      const original = await session.readPhysical(entryGpa, 1);
      await session.writePhysical(entryGpa, Uint8Array.of(0xcc));
      for (const v of [0, 1]) await session.controlVcpuEvents(v, "breakpoint", true);
      const before = workload.groundTruth().syscalls.length;
      let hits = 0;
      await handleWhile(session, workload.runTicks(6), async (item) => {
        if (item.kind !== "event") return;
        if (item.type === "breakpoint") {
          hits++;
          expect(item.gpa).toBe(entryGpa);
          expect(item.arch.regs.rip).toBe(SYSCALL_ENTRY_GVA);
          await session.writePhysical(entryGpa, original);
          await item.retry({ registers: { ...item.arch.regs } });
        } else await item.continue();
      });
      for (const v of [0, 1]) await session.controlVcpuEvents(v, "breakpoint", false);
      const traced = workload.groundTruth().syscalls.slice(before);
      expect(hits).toBeGreaterThanOrEqual(1);
      expect(hits).toBeLessThanOrEqual(2); // each vCPU may have fetched the INT3 before it was lifted
      expect(traced.length).toBeGreaterThan(hits);
      expect(traced.every((s) => s.status === "done")).toBe(true);
      expect(await session.readPhysical(entryGpa, 1)).toEqual(original);

      // SINGLESTEP → continue; SET_REGISTERS inside an event is accepted.
      await session.controlSingleStep(0, true);
      const steps: VcpuEvent[] = [];
      await handleWhile(session, workload.step(), async (item) => {
        if (item.kind !== "event") return;
        if (item.type === "singleStep") {
          if (steps.length === 0) await session.setRegisters(item.vcpu, item.arch.regs);
          steps.push(item);
        }
        await item.continue();
      });
      await session.controlSingleStep(0, false);
      expect(steps.length).toBeGreaterThan(0);
      expect(steps.every((e) => e.type === "singleStep" && !e.failed)).toBe(true);

      // TRAP after injectException → continue.
      await session.injectException(0, { vector: 6 });
      const traps: VcpuEvent[] = [];
      await handleWhile(session, workload.step(), async (item) => {
        if (item.kind !== "event") return;
        if (item.type === "trap") traps.push(item);
        await item.continue();
      });
      expect(traps).toHaveLength(1);
      expect(traps[0]).toMatchObject({ type: "trap", vcpu: 0, vector: 6 });

      // A second reply is refused locally.
      await expect(traps[0]!.continue()).rejects.toMatchObject({ reason: "EVENT_ALREADY_ANSWERED" });
    } finally {
      await session.release();
    }
    expect(session.closed).toBe(true);
    await expect(session.getVersion()).rejects.toBeInstanceOf(SessionClosedError);
  });

  it("gives observers copies they cannot answer, and refuses a second controller", async () => {
    const workload = main.guest.workload!;
    const controller = await client.attach(main.uuid, { role: "controller" });
    const observer = await client.attach(main.uuid, { role: "observer" });
    try {
      const second = await client.attach(main.uuid, { role: "controller" }).catch((e: unknown) => e);
      expect(second).toBeInstanceOf(FailedPreconditionError);
      expect(second).toMatchObject({ reason: "CONTROLLER_PRESENT" });
      expect((second as FailedPreconditionError).details.preconditionViolations[0]?.type).toBe("CONTROLLER");
      expect(observer.role).toBe("observer");
      await expect(observer.controlCr(0, 3, true)).rejects.toMatchObject({ name: "PermissionDeniedError", reason: "NOT_CONTROLLER" });
      await observer.getRegisters(0); // reads are fine
      await controller.controlCr(1, 3, true);
      await controller.controlVcpuEvents(1, "cr", true);
      const copies: VcpuEvent[] = [];
      const observing = handleWhile(observer, workload.runTicks(2), async (item) => {
        if (item.kind === "event") copies.push(item);
      });
      await handleWhile(controller, observing, async (item) => {
        if (item.kind === "event") await item.continue();
      });
      expect(copies.length).toBeGreaterThan(0);
      expect(copies[0]!.replyDeadline).toBeUndefined();
      await expect(copies[0]!.continue()).rejects.toBeInstanceOf(PermissionDeniedError);
      await controller.controlVcpuEvents(1, "cr", false);
      await controller.controlCr(1, 3, false);
    } finally {
      await observer.release();
      await controller.release();
    }
  });

  it("reports a reply that came too late as a replyRejected item", async () => {
    const workload = main.guest.workload!;
    const session = await client.attach(main.uuid, { role: "controller", eventDeadlineMs: 10 });
    try {
      expect(session.eventDeadlineMs).toBe(10);
      await session.controlCr(0, 3, true);
      await session.controlVcpuEvents(0, "cr", true);
      const ticking = workload.step();
      const items = session.events();
      let item = (await within(items.next())).value as SessionItem;
      while (item.kind !== "event") item = (await within(items.next())).value as SessionItem;
      await new Promise((r) => setTimeout(r, 60)); // past the deadline: the bridge answered already
      await item.continue();
      await ticking;
      while (item.kind !== "replyRejected") item = (await within(items.next())).value as SessionItem;
      expect(item).toMatchObject({ kind: "replyRejected", vcpu: 0 });
      expect(item.error).toBeInstanceOf(NotFoundError);
      expect(item.error.reason).toBe("EVENT_NOT_PENDING");
      await session.controlVcpuEvents(0, "cr", false);
      await session.controlCr(0, 3, false);
    } finally {
      await session.release();
    }
  });

  it("stops reading the stream when events pile up, and loses none", async () => {
    const workload = main.guest.workload!;
    const controller = await client.attach(main.uuid, { role: "controller" });
    const observer = await client.attach(main.uuid, { role: "observer", maxBufferedItems: 4 });
    try {
      await controller.controlCr(0, 3, true);
      await controller.controlVcpuEvents(0, "cr", true);
      let answered = 0;
      const start = workload.groundTruth().cr3Switches.length;
      // The observer reads nothing while the guest runs.
      await handleWhile(controller, workload.runTicks(16), async (item) => {
        if (item.kind === "event") {
          answered++;
          await item.continue();
        }
      });
      await controller.controlVcpuEvents(0, "cr", false);
      await controller.controlCr(0, 3, false);
      const switches = workload.groundTruth().cr3Switches.slice(start).filter((s) => s.vcpu === 0).length;
      expect(answered).toBe(switches);
      expect(switches).toBeGreaterThan(8);
      const seen: number[] = [];
      const items = observer.events();
      while (seen.length < switches) {
        const next = await within(items.next());
        if (next.done) break;
        if (next.value.kind === "event") seen.push(next.value.seq);
      }
      expect(seen).toHaveLength(switches);
      expect(seen).toEqual([...seen].sort((a, b) => a - b));
    } finally {
      await observer.release();
      await controller.release();
    }
  });

  it("queues commands beyond the in-flight limit and matches results by id", async () => {
    const session = await client.attach(main.uuid, { role: "observer" });
    try {
      const reads = await Promise.all(Array.from({ length: 150 }, (_, i) => session.readPhysicalMemory(BigInt(i) * 4096n, 8)));
      expect(reads).toHaveLength(150);
      expect(reads.every((r) => r.length === 8)).toBe(true);
    } finally {
      await session.release();
    }
  });

  it("rejects everything pending with CancelledError when the attach signal fires", async () => {
    const stop = new AbortController();
    const session = await client.attach(main.uuid, { role: "controller", signal: stop.signal });
    const pending = [session.readPhysical(0n, 2 * 1024 * 1024), session.getRegisters(0), session.getXsave(1)];
    const iterating = session.events().next();
    stop.abort();
    const results = await within(Promise.allSettled([...pending, iterating]));
    for (const r of results) {
      expect(r.status).toBe("rejected");
      expect((r as PromiseRejectedResult).reason).toBeInstanceOf(CancelledError);
    }
    expect(await within(session.done)).toBeInstanceOf(CancelledError);
    // A command's own signal cancels just that command.
    const other = await client.attach(main.uuid, { role: "controller" });
    const mine = new AbortController();
    const cancelled = other.readPhysical(0n, 2 * 1024 * 1024, { signal: mine.signal });
    mine.abort();
    await expect(within(cancelled)).rejects.toBeInstanceOf(CancelledError);
    expect((await other.getVmInfo()).vcpuCount).toBe(2);
    // Aborting the iteration rejects the next() it waits in. Before it, only VM changes may come:
    // sessions leaving and attaching in one turn (the first session's end and this attach) are
    // reported together, after this session subscribed.
    const events = new AbortController();
    const iterator = other.events({ signal: events.signal });
    setTimeout(() => events.abort(), 200);
    const iterated = (async () => {
      for (;;) expect((await iterator.next()).value).toMatchObject({ kind: "vmChange" });
    })();
    await expect(within(iterated)).rejects.toBeInstanceOf(CancelledError);
    await other.release();
  });

  it("delivers the unhook notice with its deadline when the VM is released", async () => {
    const session = await client.attach(releaseVm.uuid, { role: "controller" });
    const releasing = client.releaseVm(releaseVm.uuid, { gracePeriodMs: 5000 });
    const items = session.events();
    let item = (await within(items.next())).value as SessionItem;
    // The VM change to UNHOOK_PENDING may come first.
    while (item.kind === "vmChange") item = (await within(items.next())).value as SessionItem;
    expect(item).toMatchObject({ kind: "unhook", vm: releaseVm.uuid, reason: "operator" });
    const deadline = (item as { deadline: Date }).deadline.getTime();
    expect(deadline).toBeGreaterThan(Date.now() + 3000);
    await session.release();
    const released = await within(releasing);
    expect(released.state).toBe(State.DISCONNECTED);
    // The emulated QEMU reconnects: a new generation.
    await bridge.waitForVm(releaseVm.uuid, (vm) => vm.state === State.HOOKED && vm.generation === 2n);
  });

  it("ends with KVMI_SESSION_LOST and rejects what is pending when the VM goes away (CRASH)", async () => {
    const workload = crashVm.guest.workload!;
    const session = await client.attach(crashVm.uuid, { role: "controller" });
    await session.controlCr(0, 3, true);
    await session.controlVcpuEvents(0, "cr", true);
    const ticking = workload.step();
    const iterator = session.events();
    let item = (await within(iterator.next())).value as SessionItem;
    while (item.kind !== "event") item = (await within(iterator.next())).value as SessionItem;
    expect(item.type).toBe("cr");
    await item.crash();
    const afterCrash = iterator.next();
    const err = await within(afterCrash.catch((e: unknown) => e));
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err).toMatchObject({ reason: "KVMI_SESSION_LOST" });
    await expect(within(session.getVersion())).rejects.toBeInstanceOf(UnavailableError);
    expect(crashVm.guest.runState).toBe("crashed");
    await ticking;
  });
});
