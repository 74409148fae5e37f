// SPDX-License-Identifier: Apache-2.0
/**
 * The lifetime of one kernel fd (/dev/kvm or a VM): a close waits for the async ioctls in flight.
 * Separate from `kvm.ts` because this ordering rule, not any KVM ioctl, is what keeps a worker
 * thread from issuing an ioctl on a recycled fd number, and it is the same for every fd kind.
 */
import { constants as osConstants } from "node:os";
import { KvmiTransportError } from "../errors.js";
import type { Libc } from "./libc.js";
import { remoteError } from "./libc.js";

/**
 * Owns one fd. Closing while an async ioctl is in flight defers the close(2) until that call has
 * returned, so a worker thread can never issue an ioctl on a recycled fd number.
 * @internal
 */
export class OwnedFd {
  private inflight = 0;
  private state: "open" | "closing" | "closed" = "open";

  constructor(
    private readonly libc: Libc,
    readonly fd: number,
    private readonly what: string,
  ) {}

  get closed(): boolean {
    return this.state !== "open";
  }

  check(command: string): number {
    if (this.state !== "open") {
      throw new KvmiTransportError(`${command} on a closed ${this.what} fd`, { command });
    }
    return this.fd;
  }

  async run<T>(command: string, fn: (fd: number) => Promise<T>): Promise<T> {
    const fd = this.check(command);
    this.inflight++;
    let outcome: { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: unknown };
    try {
      outcome = { ok: true, value: await fn(fd) };
    } catch (error) {
      outcome = { ok: false, error };
    }
    this.inflight--;
    if (this.inflight === 0 && this.state === "closing") {
      try {
        this.release();
      } catch (closeError) {
        // The ioctl's own failure is the more useful error; a deferred close failure only surfaces alone.
        if (outcome.ok) throw closeError;
      }
    }
    if (!outcome.ok) throw outcome.error;
    return outcome.value;
  }

  close(): void {
    if (this.state !== "open") return;
    this.state = "closing";
    if (this.inflight === 0) this.release();
  }

  private release(): void {
    this.state = "closed";
    // SAFETY: we own `fd` and mark it closed before the call, so it is closed exactly once. On
    // Linux the fd is released even when close(2) reports EINTR, so it is never retried.
    const r = this.libc.close(this.fd);
    if (r.value === -1 && r.errno !== osConstants.errno.EINTR) {
      throw remoteError(r.errno, `close(${this.what} fd)`);
    }
  }
}
