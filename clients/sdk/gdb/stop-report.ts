// SPDX-License-Identifier: Apache-2.0
/**
 * Stops and resumes in gdb's terms: the vocabulary between the RSP session, which turns them into
 * stop replies and `vCont` actions, and the target (gdb-target.ts), which produces and takes them.
 * Separate so that both sides share these few definitions without the RSP code depending on the
 * target's implementation.
 */

/** Signal numbers gdb expects in stop replies (gdb's own numbering, equal to Linux's for these). */
export const GDB_SIGINT = 2;
export const GDB_SIGTRAP = 5;

/** Why the target stopped. `thread` is a vCPU index. */
export interface StopReport {
  readonly thread: number;
  readonly signal: number;
  /** The vCPU executed one of the gateway's INT3s; RIP is already at the breakpoint. */
  readonly swbreak?: boolean;
}

/** What to do with a vCPU on resume. */
export type ResumeAction = "continue" | "step";
