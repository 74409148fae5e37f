// SPDX-License-Identifier: Apache-2.0
// The profile built from Debian's vmlinuz (BTF) and the guest's kallsyms, checked offline against the
// kernel's own initialized data: init_task's fields, read at the BTF offsets from the ELF image,
// must hold what include/linux/init_task.h puts there.
import { readFileSync } from "node:fs";
import { beforeAll, describe, expect, it } from "vitest";
import { Profile, extractVmlinux } from "@kvmi/clients";
import { ensureGuestImage, TICKER_SYSCALL } from "../guest/build.js";

let profile: Profile;
let vmlinux: Uint8Array;

/** Bytes of the loaded image at a kernel VA, through the ELF program headers. */
function imageBytes(va: bigint, size: number): Uint8Array {
  const view = new DataView(vmlinux.buffer, vmlinux.byteOffset, vmlinux.byteLength);
  const phoff = Number(view.getBigUint64(0x20, true));
  const phentsize = view.getUint16(0x36, true);
  for (let i = 0; i < view.getUint16(0x38, true); i++) {
    const at = phoff + i * phentsize;
    const offset = view.getBigUint64(at + 0x08, true);
    const vaddr = view.getBigUint64(at + 0x10, true);
    const filesz = view.getBigUint64(at + 0x20, true);
    if (va >= vaddr && va + BigInt(size) <= vaddr + filesz) return vmlinux.subarray(Number(offset + va - vaddr), Number(offset + va - vaddr) + size);
  }
  throw new Error(`0x${va.toString(16)} is not in the image`);
}

beforeAll(async () => {
  const image = await ensureGuestImage();
  profile = await Profile.load(image.profile);
  vmlinux = extractVmlinux(readFileSync(image.kernel));
});

describe("a profile of Debian's kernel from its BTF and kallsyms", () => {
  it("has the symbols tests rely on", () => {
    expect(profile.os).toBe("linux");
    for (const name of ["init_task", "modules", "current_task", TICKER_SYSCALL.kernelFunction]) expect(profile.symbol(name), name).toBeDefined();
    const fn = profile.symbol(TICKER_SYSCALL.kernelFunction)!;
    expect(profile.symbolize(fn + 5n)?.offset).toBe(5n);
  });

  it("places init_task's fields where the kernel's initializer put its values", () => {
    const initTask = profile.symbol("init_task")!;
    const task = imageBytes(initTask, profile.sizeOf("task_struct"));
    const view = new DataView(task.buffer, task.byteOffset, task.byteLength);
    const comm = profile.offsetOf("task_struct", "comm");
    expect(new TextDecoder().decode(task.subarray(comm, comm + 8))).toBe("swapper\0"); // INIT_TASK_COMM; "swapper/0" only at run time
    expect(view.getUint32(profile.offsetOf("task_struct", "flags"), true) & 0x00200000).toBe(0x00200000); // PF_KTHREAD
    const tasks = BigInt(profile.offsetOf("task_struct", "tasks"));
    expect(view.getBigUint64(Number(tasks), true)).toBe(initTask + tasks); // LIST_HEAD_INIT(init_task.tasks)
    expect(view.getBigUint64(profile.offsetOf("task_struct", "real_parent"), true)).toBe(initTask);
    expect(view.getBigUint64(profile.offsetOf("task_struct", "mm"), true)).toBe(0n);
    expect(view.getBigUint64(profile.offsetOf("task_struct", "active_mm"), true)).toBe(profile.symbol("init_mm"));
  });

  it("reaches mm_struct.pgd through its anonymous struct, and init_mm.pgd is init_top_pgt (swapper_pg_dir)", () => {
    const pgd = profile.offsetOf("mm_struct", "pgd");
    const initMm = imageBytes(profile.symbol("init_mm")!, pgd + 8);
    expect(new DataView(initMm.buffer, initMm.byteOffset).getBigUint64(pgd, true)).toBe(profile.symbol("init_top_pgt")); // swapper_pg_dir on x86-64
  });
});
