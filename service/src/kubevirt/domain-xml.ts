// SPDX-License-Identifier: Apache-2.0
/**
 * Adds QEMU command-line arguments to a libvirt domain XML through libvirt's QEMU passthrough
 * namespace (`<qemu:commandline><qemu:arg value="…"/></qemu:commandline>`), by careful string
 * surgery: every byte outside the inserted (or replaced) arguments stays as it was, so whatever
 * virt-launcher and other hook sidecars wrote (comments, attribute quoting, indentation, elements
 * we do not know) reaches libvirt unchanged.
 *
 * The document is read by the tokenizer in xml-scan.ts, which never mistakes markup-looking text
 * in comments, CDATA or attribute values for an element; libvirt parses the result.
 *
 * @see https://libvirt.org/drvqemu.html#pass-through-of-arbitrary-qemu-commands
 */
import { DomainXmlError, attrValue, localName, malformed, prefixOf, scan } from "./xml-scan.js";
import type { Element } from "./xml-scan.js";

export { DomainXmlError } from "./xml-scan.js";

/** The namespace of libvirt's QEMU command-line passthrough elements. */
export const QEMU_NAMESPACE_URI = "http://libvirt.org/schemas/domain/qemu/1.0";

/** One QEMU option and its value, two consecutive `<qemu:arg>` elements: `-object` `secret,id=…`. */
export interface QemuArgPair {
  /** The option, e.g. `-chardev` or `-object`. */
  readonly option: string;
  /** Its value in QEMU option syntax, e.g. `socket,id=c0,path=/run/x.sock,reconnect=1`. */
  readonly value: string;
}

/** Options of {@link injectQemuArgs}. */
export interface InjectQemuArgsOptions {
  /**
   * Every option/`id=` this caller ever adds. An existing pair with one of them is ours from an
   * earlier run, even when the current `wanted` no longer has it (a secret that was dropped).
   * Default: the options and ids of `wanted`.
   */
  readonly owned?: ReadonlyArray<{ readonly option: string; readonly id: string }>;
  /**
   * QOM types of which QEMU accepts a single `-object` (the `introspection` object): an existing
   * one under an id that is not ours is a conflict, reported as a {@link DomainXmlError}.
   */
  readonly singletonObjectTypes?: readonly string[];
}

/**
 * Makes the domain's QEMU command line carry `wanted` (in this order), and returns the new XML.
 *
 * - Declares `xmlns:qemu` on the root `<domain>` when no prefix is bound to the QEMU namespace
 *   (another prefix already bound to it is used as is).
 * - Appends the arguments to the existing `<qemu:commandline>` (after its `<qemu:arg>` and
 *   `<qemu:env>` children), or adds one as the last child of `<domain>`.
 * - Idempotent: an option/value pair whose option and `id=` are in `options.owned` is ours from an
 *   earlier run. When ours are exactly the wanted pairs, in order and with the same values, the
 *   input is returned unchanged; otherwise ours are removed and the wanted pairs appended, so a
 *   changed configuration replaces the old arguments instead of doubling them.
 * - New elements follow the document's quote character, line ending and indentation.
 *
 * @throws DomainXmlError `KVMI_DOMAIN_XML_MALFORMED` when the document is not well-formed XML
 *   with a `<domain>` root; `KVMI_DOMAIN_XML_CONFLICT` when an `-object` of a singleton type
 *   exists under an id that is not ours.
 */
export function injectQemuArgs(xml: string, wanted: readonly QemuArgPair[], options: InjectQemuArgsOptions = {}): string {
  const doc = scan(xml);
  const root = doc.root;
  if (localName(root.name) !== "domain" || prefixOf(root.name) !== undefined) {
    throw malformed(`the root element is <${root.name}>, not <domain>`);
  }
  if (root.selfClosing) throw malformed("<domain/> is empty");
  const style = detectStyle(xml, root);

  // The prefix bound to the QEMU namespace on <domain>, or the one we are going to declare.
  let prefix = root.attrs.find((a) => a.name.startsWith("xmlns:") && a.value === QEMU_NAMESPACE_URI)?.name.slice(6);
  let declaration: string | undefined;
  if (prefix === undefined) {
    const taken = new Set(root.attrs.filter((a) => a.name.startsWith("xmlns:")).map((a) => a.name.slice(6)));
    prefix = "qemu";
    for (let n = 1; taken.has(prefix); n++) prefix = `qemu${n}`;
    declaration = ` xmlns:${prefix}=${style.quote}${QEMU_NAMESPACE_URI}${style.quote}`;
  }

  const commandLines = root.children.filter((c) => c.name === `${prefix}:commandline`);
  const args = commandLines.flatMap((c) => c.children.filter((a) => a.name === `${prefix}:arg`));

  // Pairs already on the command line: an option followed by its value.
  const owned = new Set((options.owned ?? wanted.map((p) => ({ option: p.option, id: qemuOptId(p.value) ?? "" }))).map((o) => pairKey(o.option, o.id)));
  const ours: Element[] = [];
  const singletons = new Set(options.singletonObjectTypes ?? []);
  for (let i = 0; i + 1 < args.length; i++) {
    const option = attrValue(args[i]!, "value");
    const value = attrValue(args[i + 1]!, "value");
    if (option === undefined || value === undefined || !option.startsWith("-")) continue;
    const id = qemuOptId(value);
    if (id !== undefined && owned.has(pairKey(option, id))) {
      ours.push(args[i]!, args[i + 1]!);
      i++;
      continue;
    }
    const type = qemuOptType(value);
    if (option === "-object" && type !== undefined && singletons.has(type)) {
      throw new DomainXmlError(
        "KVMI_DOMAIN_XML_CONFLICT",
        `the domain already has a QEMU -object ${type} (id=${id ?? "?"}); QEMU accepts only one`,
      );
    }
  }
  const present = ours.map((a) => attrValue(a, "value"));
  const desired = wanted.flatMap((p) => [p.option, p.value]);
  if (declaration === undefined && present.length === desired.length && present.every((v, i) => v === desired[i])) {
    return xml;
  }

  const edits: Edit[] = [];
  if (declaration !== undefined) edits.push({ at: root.attrsEnd, remove: 0, text: declaration });
  for (const element of ours) edits.push({ at: element.leadingSpaceStart, remove: element.end - element.leadingSpaceStart, text: "" });

  const argElement = (value: string): string =>
    `<${prefix}:arg value=${style.quote}${escapeAttr(value, style.quote)}${style.quote}${style.selfClose ? "/>" : `></${prefix}:arg>`}`;
  const target = commandLines[0];
  if (target === undefined) {
    const indent = style.childIndent;
    const inner = indent + style.unit;
    const lines = [
      `${style.newline}${indent}<${prefix}:commandline>`,
      ...desired.map((v) => `${style.newline}${inner}${argElement(v)}`),
      `${style.newline}${indent}</${prefix}:commandline>`,
    ];
    edits.push({ at: root.children.at(-1)?.end ?? root.startTagEnd, remove: 0, text: lines.join("") });
  } else {
    const remaining = target.children.filter((c) => !ours.includes(c));
    const indent = indentOf(xml, target) ?? style.childIndent;
    const inner = (remaining[0] && indentOf(xml, remaining[0])) ?? indent + style.unit;
    const added = desired.map((v) => `${style.newline}${inner}${argElement(v)}`).join("");
    if (target.selfClosing) {
      // <qemu:commandline/> becomes <qemu:commandline>…</qemu:commandline>.
      const open = xml.slice(target.start, target.end).replace(/\s*\/>$/, ">");
      edits.push({ at: target.start, remove: target.end - target.start, text: `${open}${added}${style.newline}${indent}</${target.name}>` });
    } else {
      const last = remaining.at(-1);
      edits.push({ at: last ? last.end : target.startTagEnd, remove: 0, text: added });
    }
  }
  return applyEdits(xml, edits);
}

/** The value of QEMU's `id=` key in an option value (`secret,id=s0,file=…` → `s0`). */
export function qemuOptId(value: string): string | undefined {
  for (const [key, val] of splitQemuOpts(value)) if (key === "id") return val;
  return undefined;
}

/**
 * Escapes a value for QEMU's option syntax, where `,` separates keys: a literal comma is written
 * twice (`a,,b` is the value `a,b`).
 * @see https://www.qemu.org/docs/master/system/invocation.html (the `,,` rule for option values)
 */
export function escapeQemuOptValue(value: string): string {
  return value.replaceAll(",", ",,");
}

/** Splits `type,key=val,key2=val2` into `[key, value]` pairs (the first item has key ``). */
function splitQemuOpts(value: string): Array<[string, string]> {
  const parts: string[] = [];
  let current = "";
  for (let i = 0; i < value.length; i++) {
    if (value[i] === ",") {
      if (value[i + 1] === ",") {
        current += ",";
        i++;
        continue;
      }
      parts.push(current);
      current = "";
    } else {
      current += value[i];
    }
  }
  parts.push(current);
  return parts.map((part) => {
    const eq = part.indexOf("=");
    return eq < 0 ? ["", part] : [part.slice(0, eq), part.slice(eq + 1)];
  });
}

/** The QOM type of an `-object` value: its first, key-less item, or `qom-type=`. */
function qemuOptType(value: string): string | undefined {
  const opts = splitQemuOpts(value);
  return opts[0]![0] === "" ? opts[0]![1] : opts.find(([key]) => key === "qom-type")?.[1];
}

const pairKey = (option: string, id: string): string => `${option}\u0000${id}`;

// ---------------------------------------------------------------------------------------------
// Style and edits

/** An attribute value written between `quote`s: the markup characters as entities. */
function escapeAttr(value: string, quote: '"' | "'"): string {
  const escaped = value.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");
  return quote === '"' ? escaped.replaceAll('"', "&quot;") : escaped.replaceAll("'", "&apos;");
}

interface Style {
  readonly quote: '"' | "'";
  /** `\n`, `\r\n`, or `` for a document on one line. */
  readonly newline: string;
  /** The indentation of <domain>'s children. */
  readonly childIndent: string;
  /** One indentation step. */
  readonly unit: string;
  /**
   * Empty elements as `<x/>`; false for documents that write every element with an end tag, as
   * Go's encoding/xml (virt-launcher) does.
   */
  readonly selfClose: boolean;
}

/** The whitespace between the start of an element's line and the element, if it starts a line. */
function indentOf(xml: string, element: Element): string | undefined {
  const before = xml.slice(element.leadingSpaceStart, element.start);
  const nl = before.lastIndexOf("\n");
  return nl < 0 ? undefined : before.slice(nl + 1);
}

function detectStyle(xml: string, root: Element): Style {
  const quote = root.attrs[0]?.quote ?? '"';
  const anySelfClosing = (element: Element): boolean => element.selfClosing || element.children.some(anySelfClosing);
  const selfClose = anySelfClosing(root);
  const newline = xml.includes("\r\n") ? "\r\n" : xml.includes("\n") ? "\n" : "";
  if (newline === "") return { quote, newline, childIndent: "", unit: "", selfClose };
  const childIndent = root.children.map((c) => indentOf(xml, c)).find((s) => s !== undefined) ?? "  ";
  // One step: a grandchild's indent minus its parent's, when the document shows one.
  let unit = childIndent;
  for (const child of root.children) {
    const parentIndent = indentOf(xml, child);
    const inner = child.children.map((g) => indentOf(xml, g)).find((s) => s !== undefined);
    if (parentIndent !== undefined && inner !== undefined && inner.startsWith(parentIndent) && inner.length > parentIndent.length) {
      unit = inner.slice(parentIndent.length);
      break;
    }
  }
  return { quote, newline, childIndent, unit: unit === "" ? "  " : unit, selfClose };
}

interface Edit {
  readonly at: number;
  readonly remove: number;
  readonly text: string;
}

/**
 * Applies non-overlapping edits. At one offset, insertions go before a removal that starts there
 * and keep their own order.
 */
function applyEdits(xml: string, edits: readonly Edit[]): string {
  const ordered = edits
    .map((edit, index) => ({ edit, index }))
    .sort((a, b) => a.edit.at - b.edit.at || Number(a.edit.remove > 0) - Number(b.edit.remove > 0) || a.index - b.index);
  let out = "";
  let cursor = 0;
  for (const { edit } of ordered) {
    out += xml.slice(cursor, edit.at) + edit.text;
    cursor = edit.at + edit.remove;
  }
  return out + xml.slice(cursor);
}
