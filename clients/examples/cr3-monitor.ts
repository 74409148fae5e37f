// SPDX-License-Identifier: Apache-2.0
/**
 * cr3-monitor: a process-switch timeline from CR3 writes. Every scheduler switch loads the next
 * process's page tables into CR3; with CR3 interception on (KVMI_VCPU_CONTROL_CR + the CR event)
 * each write arrives as an event holding the old and the new value, which the task list maps to
 * processes. The tool lets every write through unchanged, so it asks the bridge to do that itself:
 * a `notify` filter rule (docs/event-filters.md) answers each CR3 write at once next to the guest
 * and sends the event on as a notification, so the vCPU never waits for the network.
 *
 *   npx tsx clients/examples/cr3-monitor.ts --target 127.0.0.1:50051 --vm demo-0 --duration 2000
 */
import { CancelledError, UnavailableError } from "@kvmi/clients";
import { fail, integerOption, setup, stdout, stdoutClosed } from "./example-args.js";
import { openGuest, PROFILE_OPTION, TaskIndex } from "./guest-profile.js";

const USAGE = "usage: cr3-monitor.ts --vm <uuid|name> [--target host:port] [--duration ms] [--count n] [--profile isf.json] [--json]";

async function main(): Promise<void> {
  const { client, vm, json, values } = await setup<{ duration?: string; count?: string; profile?: string }>(USAGE, {
    duration: { type: "string" },
    count: { type: "string" },
    ...PROFILE_OPTION,
  });
  const stop = new AbortController();
  // `cr3-monitor --json | head`: the reader's exit ends the monitor like Ctrl-C, releasing the session.
  stdoutClosed.addEventListener("abort", () => stop.abort(), { once: true });
  for (const signal of ["SIGINT", "SIGTERM"] as const) process.once(signal, () => stop.abort());
  const duration = integerOption(values, "duration", USAGE);
  if (duration !== undefined) setTimeout(() => stop.abort(), duration).unref();
  const max = integerOption(values, "count", USAGE) ?? Infinity;

  const tasks = new TaskIndex(await (await openGuest(client.vm(vm.uuid), values.profile)).processes());
  const session = await client.attach(vm.uuid, { role: "controller", eventFilter: "cr cr=3 -> notify as cr3-switch" });
  const vcpus = Array.from({ length: session.vm.vcpuCount }, (_, i) => i);
  let switches = 0;
  try {
    for (const v of vcpus) {
      try {
        await session.controlCr(v, 3, true);
        await session.controlVcpuEvents(v, "cr", true);
      } catch (err) {
        // KVM_EAGAIN: the guest has not started this vCPU yet.
        if (!(err instanceof UnavailableError)) throw err;
        process.stderr.write(`vCPU ${v} is not started yet; not monitored\n`);
      }
    }
    process.stderr.write(`monitoring CR3 writes on ${vcpus.length} vCPU(s) of ${vm.name}\n`);
    if (!json) stdout.write(`${"TIME".padEnd(24)}  VCPU  FROM -> TO\n`);
    for await (const item of session.events({ signal: stop.signal })) {
      if (item.kind === "unhook") break;
      if (item.kind !== "event") continue;
      if (item.type === "cr" && item.cr === 3) {
        const from = tasks.byPageTable(item.oldValue);
        const to = tasks.byPageTable(item.newValue);
        const time = item.receiveTime ?? new Date();
        if (json) {
          stdout.write(
            `${JSON.stringify({ time: time.toISOString(), vcpu: item.vcpu, fromPid: from?.pid ?? null, fromComm: from?.comm ?? null, toPid: to?.pid ?? null, toComm: to?.comm ?? null, cr3: `0x${item.newValue.toString(16)}` })}\n`,
          );
        } else {
          stdout.write(`${time.toISOString().padEnd(24)}  ${String(item.vcpu).padStart(4)}  ${tasks.describe(item.oldValue)} -> ${tasks.describe(item.newValue)}\n`);
        }
        switches++;
      }
      // A notification was answered by the rule (the write went through with the guest's value);
      // anything else still waits for us.
      if (item.notification === undefined) await item.continue();
      if (switches >= max) break;
    }
  } catch (err) {
    if (!(stop.signal.aborted && err instanceof CancelledError)) throw err;
  } finally {
    if (!session.closed) {
      for (const v of vcpus) {
        await session.controlVcpuEvents(v, "cr", false).catch(() => undefined);
        await session.controlCr(v, 3, false).catch(() => undefined);
      }
    }
    // Release answers any CR event still pending with CONTINUE and the guest's value.
    await session.release();
    client.close();
  }
  process.stderr.write(`${switches} switches\n`);
}

main().catch(fail);
