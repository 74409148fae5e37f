// SPDX-License-Identifier: Apache-2.0
/** VmRecord -> Vm / VmChange (vm.proto), for all handshake variants and states. */
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { parseHandshake, encodeHandshake } from "@kvmi/kvm-bridge/wire";
import { CpuType, HandshakeVariant, State, VmChangeType, VmSchema } from "@kvmi/proto";
import { describe, expect, it } from "vitest";
import { UUID, VM } from "./test-support.js";
import { vmChangeToProto, vmToProto } from "./vm.js";
import type { VmRecord, VmState } from "./vm.js";

const HOOKED_AT = new Date("2025-03-04T05:06:07.890Z");

const BASE: VmRecord = {
  uuid: UUID,
  name: "guest-1",
  state: "hooked",
  generation: 2,
  vcpuCount: 4,
  startTime: 1_700_000_000n,
  hookedAt: HOOKED_AT,
  variant: "base",
  dialect: "v9",
  kvmiVersion: 1,
  features: { singlestep: true },
  controllerAttached: true,
  observerCount: 3,
};

describe("vmToProto", () => {
  it("maps the base record", () => {
    const vm = vmToProto(BASE);
    expect(vm).toEqual(
      expect.objectContaining({
        name: VM,
        uuid: UUID,
        displayName: "guest-1",
        state: State.HOOKED,
        generation: 2n,
        vcpuCount: 4,
        handshakeVariant: HandshakeVariant.BASE,
        dialect: "v9",
        kvmiVersion: 1,
        cpuType: CpuType.UNSPECIFIED,
        e820Entries: [],
        controllerAttached: true,
        observerCount: 3,
      }),
    );
    expect(vm.startTime).toEqual(expect.objectContaining({ seconds: 1_700_000_000n, nanos: 0 }));
    expect(timestampDate(vm.hookTime!)).toEqual(HOOKED_AT);
    expect(vm.features?.singlestep).toBe(true);
    expect(vm.maxGpa).toBeUndefined();
    expect(vm.unhookDeadline).toBeUndefined();
    expect(fromBinary(VmSchema, toBinary(VmSchema, vm))).toEqual(vm);
  });

  it("maps the max-gpa and e820 variants", () => {
    expect(vmToProto({ ...BASE, variant: "max-gpa", maxGpa: 0x1_0000_0000n }).maxGpa).toBe(0x1_0000_0000n);
    const e820 = vmToProto({
      ...BASE,
      variant: "e820",
      cpuType: 1,
      e820: [
        { address: 0n, length: 0x9fc00n, type: 1 },
        { address: 0x100000n, length: 0x7ff00000n, type: 1 },
      ],
    });
    expect(e820.handshakeVariant).toBe(HandshakeVariant.E820);
    expect(e820.cpuType).toBe(CpuType.X86_64);
    expect(e820.e820Entries.map((e) => [e.address, e.length, e.type])).toEqual([
      [0n, 0x9fc00n, 1],
      [0x100000n, 0x7ff00000n, 1],
    ]);
  });

  it("maps the handshake cpu_type as vm.proto says (0 i386, 1 x86_64, 255 or other unknown)", () => {
    expect(vmToProto({ ...BASE, cpuType: 0 }).cpuType).toBe(CpuType.I386);
    expect(vmToProto({ ...BASE, cpuType: 255 }).cpuType).toBe(CpuType.UNKNOWN);
    expect(vmToProto({ ...BASE, cpuType: 7 }).cpuType).toBe(CpuType.UNKNOWN);
  });

  it("accepts a VmIdentity from the real handshake parser spread into the record", () => {
    const bytes = encodeHandshake({ variant: "max-gpa", uuid: UUID, name: "from-qemu", startTime: 42n, maxGpa: 0x2000_0000n });
    const identity = parseHandshake(bytes, "max-gpa");
    const vm = vmToProto({ ...BASE, ...identity });
    expect(vm).toEqual(expect.objectContaining({ uuid: UUID, displayName: "from-qemu", maxGpa: 0x2000_0000n, handshakeVariant: HandshakeVariant.MAX_GPA }));
    expect(vm.startTime?.seconds).toBe(42n);
  });

  it("handles a record without a handshake or GET_VERSION yet", () => {
    const vm = vmToProto({ ...BASE, variant: "none", startTime: undefined, kvmiVersion: undefined, features: undefined, vcpuCount: 0 });
    expect(vm.handshakeVariant).toBe(HandshakeVariant.NONE);
    expect(vm.startTime).toBeUndefined();
    expect(vm.kvmiVersion).toBe(0);
    expect(vm.features).toBeUndefined();
  });

  it.each<[VmState, State]>([
    ["handshaking", State.HANDSHAKING],
    ["hooked", State.HOOKED],
    ["unhook-pending", State.UNHOOK_PENDING],
    ["releasing", State.RELEASING],
    ["disconnected", State.DISCONNECTED],
  ])("maps state %s", (state, expected) => {
    expect(vmToProto({ ...BASE, state }).state).toBe(expected);
  });
});

describe("vmChangeToProto", () => {
  it("sets unhook_deadline only for unhook-pending", () => {
    const deadline = new Date("2025-03-04T05:07:07.000Z");
    const record: VmRecord = { ...BASE, state: "unhook-pending", unhookDeadline: deadline };
    const change = vmChangeToProto("unhook-pending", record, HOOKED_AT);
    expect(change.type).toBe(VmChangeType.UNHOOK_PENDING);
    expect(timestampDate(change.unhookDeadline!)).toEqual(deadline);
    expect(timestampDate(change.vm!.unhookDeadline!)).toEqual(deadline);
    expect(timestampDate(change.changeTime!)).toEqual(HOOKED_AT);
    expect(vmChangeToProto("state-changed", record, HOOKED_AT).unhookDeadline).toBeUndefined();
    expect(vmChangeToProto("rehooked", BASE, HOOKED_AT).type).toBe(VmChangeType.REHOOKED);
  });
});
