// SPDX-License-Identifier: Apache-2.0
/**
 * KVMI page-access restrictions on a QEMU guest, as gdbstub watchpoints (docs/qemu-backend.md
 * "Page restrictions"). KVMI restricts a guest-physical page in the EPT; QEMU's watchpoints watch
 * guest-virtual ranges. So a restricted GFN is watched through the kernel's own mappings of it:
 * the direct map (every RAM page on x86-64 Linux) and, for kernel image pages, the text map.
 *
 * - No write (W cleared) → a write watchpoint (`Z2`) over the page; no read → a read watchpoint
 *   (`Z3`). Both cleared → both points rather than one access watchpoint (`Z4`): QEMU's `awatch`
 *   stop does not say whether the access read or wrote, and the PF event must name the access.
 * - Execute restrictions cannot be watched (a watchpoint sees data accesses only) and are refused
 *   with -KVM_EOPNOTSUPP, as is a page with no kernel mapping.
 * - TCG watchpoints take any length, so one point covers the page. QEMU with KVM acceleration
 *   offers only the four debug registers (1, 2, 4 or 8 bytes): the stub refuses a page-long point
 *   and SET_PAGE_ACCESS answers -KVM_EOPNOTSUPP.
 * - Accesses through other mappings of the page (user space, vmalloc) are not seen.
 * - QEMU reports a watchpoint after the instruction completed: the PF event comes after the access,
 *   RIP at the next instruction; CONTINUE and RETRY both carry on (the access cannot be undone).
 */
import type { QmpClient } from "./qmp-client.js";
import { GdbPoint, type GdbClient, type StopReply } from "./gdb-client.js";

const PAGE_SIZE = 4096n;
const ACCESS_R = 1;
const ACCESS_W = 2;
const ACCESS_X = 4;
/** -KVM_EOPNOTSUPP as the kernel side returns errnos (positive, wire/dialects/errno.ts). */
const KVM_EOPNOTSUPP = 95;
/** Linux x86-64's kernel text map and direct map (the GVAs through which a GPA is watched). */
export const KERNEL_TEXT_MAP = 0xffffffff80000000n;
export const DIRECT_MAP = 0xffff888000000000n;

interface Watch {
  readonly kind: GdbPoint.WriteWatch | GdbPoint.ReadWatch;
  readonly gva: bigint;
}

interface Restriction {
  readonly access: number;
  readonly watches: Watch[];
}

/** A data access that hit a restricted page (what a PF event reports). */
export interface PageHit {
  readonly gva: bigint;
  readonly gpa: bigint;
  /** The R or W bit of the access (KVMI's `access`). */
  readonly access: number;
}

/** The kernel GVAs that map `gpa` (checked with QEMU's page walk on vCPU 0). */
export async function kernelAliases(qmp: QmpClient, gpa: bigint): Promise<bigint[]> {
  const aliases: bigint[] = [];
  for (const candidate of [KERNEL_TEXT_MAP + gpa, DIRECT_MAP + gpa]) {
    if ((await qmp.gva2gpa(0, candidate)) === gpa) aliases.push(candidate);
  }
  return aliases;
}

/** The restrictions of one VM; every method runs while the caller holds the VM stopped. */
export class PageWatches {
  private readonly restrictions = new Map<bigint, Restriction>();

  constructor(private readonly gdb: GdbClient, private readonly qmp: QmpClient) {}

  /** The access the guest may use on `gfn` (7 when unrestricted). */
  access(gfn: bigint): number {
    return this.restrictions.get(gfn)?.access ?? 7;
  }

  get size(): number {
    return this.restrictions.size;
  }

  /** Applies `access` to `gfn`; 0 or a KVM errno. On an error the page is left unrestricted. */
  async set(gfn: bigint, access: number): Promise<number> {
    await this.remove(gfn);
    if (access === 7) return 0;
    if ((access & ACCESS_X) === 0) return KVM_EOPNOTSUPP;
    const gpa = gfn * PAGE_SIZE;
    const aliases = await kernelAliases(this.qmp, gpa);
    if (aliases.length === 0) return KVM_EOPNOTSUPP;
    const kinds = [...((access & ACCESS_W) === 0 ? [GdbPoint.WriteWatch] : []), ...((access & ACCESS_R) === 0 ? [GdbPoint.ReadWatch] : [])] as Watch["kind"][];
    const watches: Watch[] = [];
    try {
      for (const gva of aliases) {
        for (const kind of kinds) {
          await this.gdb.insertPoint(kind, gva, Number(PAGE_SIZE));
          watches.push({ kind, gva });
        }
      }
    } catch {
      // KVM acceleration: no page-long watchpoints (see the header). Undo what went in.
      for (const watch of watches) await this.gdb.removePoint(watch.kind, watch.gva, Number(PAGE_SIZE)).catch(() => undefined);
      return KVM_EOPNOTSUPP;
    }
    this.restrictions.set(gfn, { access, watches });
    return 0;
  }

  private async remove(gfn: bigint): Promise<void> {
    const existing = this.restrictions.get(gfn);
    if (!existing) return;
    this.restrictions.delete(gfn);
    for (const watch of existing.watches) await this.gdb.removePoint(watch.kind, watch.gva, Number(PAGE_SIZE)).catch(() => undefined);
  }

  /** Drops every restriction (unhook, detach). */
  async clear(): Promise<void> {
    for (const gfn of [...this.restrictions.keys()]) await this.remove(gfn);
  }

  /** The restricted access a watchpoint stop reports, if it is one of ours. */
  hitOf(stop: StopReply): PageHit | undefined {
    if (!stop.watch) return undefined;
    const { address, kind } = stop.watch;
    for (const [gfn, restriction] of this.restrictions) {
      const watch = restriction.watches.find((w) => address >= w.gva && address < w.gva + PAGE_SIZE);
      if (!watch) continue;
      // `awatch` is never inserted (see the header); `rwatch` is a read, `watch` a write.
      return { gva: address, gpa: gfn * PAGE_SIZE + (address - watch.gva), access: kind === "rwatch" ? ACCESS_R : ACCESS_W };
    }
    return undefined;
  }
}
