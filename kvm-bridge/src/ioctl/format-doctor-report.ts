// SPDX-License-Identifier: Apache-2.0
/**
 * The terminal rendering of a `kvmi-bridge doctor` report: one finding per line, conclusion and hints
 * last. Separate from the checks (doctor.ts) because it only reads a finished {@link DoctorReport}
 * and never touches the host.
 */
import type { DoctorIoctl, DoctorReport } from "./doctor-report.js";

/** `HOOK 0x4018AEC3, UNHOOK 0xAEC4, …` */
function ioctlList(ioctls: readonly DoctorIoctl[]): string {
  return ioctls.map((i) => `${i.name.replace("KVM_INTROSPECTION_", "")} ${i.number}`).join(", ");
}

function answerText(value: number | null): string {
  return value === null ? "-" : String(value);
}

/** Renders a {@link DoctorReport} for a terminal: one finding per line, conclusion and hints last. */
export function formatDoctorReport(report: DoctorReport): string {
  const lines: string[] = [];
  const row = (label: string, value: string): void => {
    lines.push(`  ${label.padEnd(20)} ${value}`);
  };
  lines.push("kvmi-bridge doctor");
  row("kernel", report.kernelRelease);
  row(
    report.device.path,
    report.device.openable ? `ok (${report.device.detail})` : `FAIL: ${report.device.detail}`,
  );
  row(
    "KVM API version",
    report.apiVersion.value === null
      ? "unknown"
      : `${report.apiVersion.value} (${report.apiVersion.ok ? "ok" : `expected ${report.apiVersion.expected}`})`,
  );
  const marker = report.kvmi.marker;
  row(
    "kvm.introspection",
    marker.present
      ? `present (${marker.enabled === null ? "value unreadable" : marker.enabled ? "Y" : "N"}) at ${marker.path}`
      : `absent (no ${marker.path})`,
  );
  row("scratch VM", report.scratchVm.created ? "created and closed" : `not created (${report.scratchVm.error})`);
  lines.push("  KVM_CHECK_EXTENSION (system fd / VM fd):");
  for (const c of report.capabilities) {
    const who = c.role === "introspection" ? `KVM_CAP_INTROSPECTION of ${c.dialects.join(", ")}` : `age check for ${c.dialects.join(", ")}`;
    const mainline = c.mainlineName === null ? "" : `  [mainline ${c.mainlineName}]`;
    lines.push(`    cap ${String(c.cap).padEnd(4)} ${`${answerText(c.system)} / ${answerText(c.vm)}`.padEnd(20)} ${who}${mainline}`);
  }
  row("verdict", report.kvmi.reason);
  if (report.kvmi.ioctls.length > 0) {
    row("KVMI ioctls", `${report.kvmi.dialectLabel ?? "?"}: ${ioctlList(report.kvmi.ioctls)}`);
  } else if (report.kvmi.candidates.length > 1) {
    for (const c of report.kvmi.candidates) {
      row("if it were", `${c.dialect} (cap ${c.cap}): ${ioctlList(c.ioctls)} (not issued)`);
    }
  }
  lines.push("");
  lines.push(`conclusion: ${report.conclusion}`);
  if (report.hints.length > 0) {
    lines.push("what to do:");
    for (const hint of report.hints) lines.push(`  - ${hint}`);
  }
  if (report.notes.length > 0) {
    lines.push("notes:");
    for (const note of report.notes) lines.push(`  - ${note}`);
  }
  return lines.join("\n");
}
