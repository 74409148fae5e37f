// SPDX-License-Identifier: Apache-2.0
/**
 * Guest-side loops of the event-filter part of `npm run bench` (filter-phase.ts), run where the
 * emulated guests live (filter-emulator-child.ts):
 *
 * - {@link stampedCrLoop}: MOV CR3 in a loop like emulator-host's eventLoop, with the write's start
 *   time (CLOCK_MONOTONIC ns, the same clock in every process of the machine) in R15, which the
 *   event carries in its registers: the controller subtracts it from its own clock when a
 *   notification arrives, giving the guest-to-controller latency without any clock sync. With
 *   `gapMs` the guest pauses between writes (an isolated event, the work a notification leaves
 *   behind in the bridge done before the next one comes).
 * - {@link syscallLoop}: the workload's syscall entry executed back to back by vCPU 0 of many VMs
 *   at once, switching between the workload's processes (CR3) before each, so that a tool
 *   intercepting the entry sees every process.
 */
import { guestModel } from "@kvmi/kvm-bridge/emulator";
import { cr3WriteLoops, requireVm } from "./emulator-host.js";
import type { EventLoopResult } from "./emulator-host.js";

function stampedCrLoop(params: { key: string; durationMs: number; maxSamples: number; gapMs: number }): Promise<EventLoopResult> {
  const vcpu = requireVm(params.key).guest.vcpus[0]!;
  return cr3WriteLoops([vcpu], params.durationMs, params.maxSamples, {
    beforeWrite: (v) => (v.state.regs.r15 = process.hrtime.bigint()),
    gapMs: params.gapMs,
  });
}

/** Per VM: syscalls completed, and those that did not complete normally. */
export interface SyscallLoopResult {
  readonly completed: Record<string, number>;
  readonly failures: number;
  readonly elapsedMs: number;
}

async function syscallLoop(params: { keys: readonly string[]; durationMs: number }): Promise<SyscallLoopResult> {
  const completed: Record<string, number> = {};
  let failures = 0;
  const start = performance.now();
  const end = start + params.durationMs;
  await Promise.all(
    params.keys.map(async (key) => {
      const vm = requireVm(key);
      const vcpu = vm.guest.vcpus[0]!;
      const users = vm.guest.workload!.tasks.filter((t) => !t.kernelThread);
      let done = 0;
      for (let i = 0; performance.now() < end; i++) {
        const task = users[i % users.length]!;
        if (vcpu.state.sregs.cr3 !== task.cr3) await vcpu.writeCr(3, task.cr3, { at: guestModel.SWITCH_MM_GVA });
        const out = await vcpu.executeAt(guestModel.SYSCALL_ENTRY_GVA, { regs: { rax: BigInt(task.syscalls[0] ?? 0) } });
        if (out.status === "done") done++;
        else failures++;
      }
      completed[key] = done;
    }),
  );
  return { completed, failures, elapsedMs: performance.now() - start };
}

/** The page-table roots of a VM's user processes (what a tool reads from the task list). */
function processRoots(params: { key: string }): string[] {
  return requireVm(params.key).guest.workload!.tasks.filter((t) => !t.kernelThread).map((t) => `0x${t.cr3.toString(16)}`);
}

export const filterGuestHandlers = { stampedCrLoop, syscallLoop, processRoots } as const;
