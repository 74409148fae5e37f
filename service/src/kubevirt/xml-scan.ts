// SPDX-License-Identifier: Apache-2.0
/**
 * The small XML tokenizer behind injectQemuArgs (domain-xml.ts). It understands comments, CDATA
 * sections, processing instructions, a DOCTYPE and quoted attribute values, so markup-looking text
 * inside any of those is never mistaken for an element, and records the offsets the string surgery
 * needs (where a tag, its attributes and its leading whitespace start and end). It checks that tags
 * nest; it is not a validating parser and does not need to be: libvirt parses the result.
 *
 * Apart from domain-xml.ts because reading the document knows nothing of QEMU arguments; the
 * error class lives here because the tokenizer is what reports malformed documents.
 *
 * @see https://www.w3.org/TR/xml/ (the productions the tokenizer follows)
 */

/** The domain XML cannot be rewritten: malformed, or in conflict with what we add. */
export class DomainXmlError extends Error {
  /** Stable error code. */
  readonly code: "KVMI_DOMAIN_XML_MALFORMED" | "KVMI_DOMAIN_XML_CONFLICT";
  constructor(code: DomainXmlError["code"], message: string) {
    super(message);
    this.name = "DomainXmlError";
    this.code = code;
  }
}

/** One attribute of a start tag. */
export interface Attr {
  readonly name: string;
  /** The value with entity and character references decoded. */
  readonly value: string;
  readonly quote: '"' | "'";
}

/** One element, with the offsets of its parts in the document. */
export interface Element {
  readonly name: string;
  readonly attrs: readonly Attr[];
  /** Offset of `<`. */
  readonly start: number;
  /** Offset just after the last attribute (or the name): where a new attribute goes. */
  readonly attrsEnd: number;
  /** Offset just after the start tag's `>`. */
  readonly startTagEnd: number;
  /** Offset just after the element (its end tag's `>`, or the start tag's for `<x/>`). */
  end: number;
  /** Start of the whitespace run that precedes the element (its `start` when there is none). */
  readonly leadingSpaceStart: number;
  readonly selfClosing: boolean;
  readonly children: Element[];
}

/** A scanned document: its root element. */
export interface Scanned {
  readonly root: Element;
}

const NAME = /[A-Za-z_:\u00C0-\uFFFF][-.\w:\u00B7\u00C0-\uFFFF]*/y;
const SPACE = /[ \t\r\n]*/y;

/** The MALFORMED error, with `detail` saying what and where. */
export function malformed(detail: string): DomainXmlError {
  return new DomainXmlError("KVMI_DOMAIN_XML_MALFORMED", `the domain XML is malformed: ${detail}`);
}

function lineOf(xml: string, offset: number): string {
  let line = 1;
  for (let i = 0; i < offset && i < xml.length; i++) if (xml.charCodeAt(i) === 10) line++;
  return `line ${line}`;
}

/** Tokenizes `xml` into its element tree. @throws DomainXmlError `KVMI_DOMAIN_XML_MALFORMED` */
export function scan(xml: string): Scanned {
  const stack: Element[] = [];
  let root: Element | undefined;
  let i = 0;
  const expectEnd = (marker: string, from: number, what: string): number => {
    const end = xml.indexOf(marker, from);
    if (end < 0) throw malformed(`unterminated ${what} at ${lineOf(xml, from)}`);
    return end + marker.length;
  };
  const readName = (at: number): string => {
    NAME.lastIndex = at;
    const m = NAME.exec(xml);
    if (m === null) throw malformed(`expected a name at ${lineOf(xml, at)}`);
    return m[0];
  };
  const skipSpace = (at: number): number => {
    SPACE.lastIndex = at;
    SPACE.exec(xml);
    return SPACE.lastIndex;
  };
  while (i < xml.length) {
    const lt = xml.indexOf("<", i);
    if (lt < 0) break;
    if (xml.startsWith("<!--", lt)) {
      i = expectEnd("-->", lt + 4, "comment");
    } else if (xml.startsWith("<![CDATA[", lt)) {
      if (stack.length === 0) throw malformed(`CDATA outside the root element at ${lineOf(xml, lt)}`);
      i = expectEnd("]]>", lt + 9, "CDATA section");
    } else if (xml.startsWith("<?", lt)) {
      i = expectEnd("?>", lt + 2, "processing instruction");
    } else if (xml.startsWith("<!", lt)) {
      if (root !== undefined || stack.length > 0) throw malformed(`unexpected <! at ${lineOf(xml, lt)}`);
      i = skipDeclaration(xml, lt);
    } else if (xml.startsWith("</", lt)) {
      const name = readName(lt + 2);
      const close = skipSpace(lt + 2 + name.length);
      if (xml[close] !== ">") throw malformed(`bad end tag </${name} at ${lineOf(xml, lt)}`);
      const open = stack.pop();
      if (open === undefined || open.name !== name) {
        throw malformed(`</${name}> at ${lineOf(xml, lt)} does not close ${open ? `<${open.name}>` : "any element"}`);
      }
      open.end = close + 1;
      i = close + 1;
    } else {
      if (root !== undefined && stack.length === 0) throw malformed(`a second root element at ${lineOf(xml, lt)}`);
      const name = readName(lt + 1);
      const attrs: Attr[] = [];
      let at = lt + 1 + name.length;
      let attrsEnd = at;
      let selfClosing = false;
      for (;;) {
        const next = skipSpace(at);
        if (xml.startsWith("/>", next)) {
          selfClosing = true;
          at = next + 2;
          break;
        }
        if (xml[next] === ">") {
          at = next + 1;
          break;
        }
        if (next === at) throw malformed(`expected whitespace, > or /> in <${name}> at ${lineOf(xml, next)}`);
        const attrName = readName(next);
        let p = skipSpace(next + attrName.length);
        if (xml[p] !== "=") throw malformed(`attribute ${attrName} of <${name}> has no value at ${lineOf(xml, p)}`);
        p = skipSpace(p + 1);
        const quote = xml[p];
        if (quote !== '"' && quote !== "'") throw malformed(`attribute ${attrName} of <${name}> is not quoted at ${lineOf(xml, p)}`);
        const close = xml.indexOf(quote, p + 1);
        if (close < 0) throw malformed(`unterminated attribute ${attrName} of <${name}> at ${lineOf(xml, p)}`);
        const raw = xml.slice(p + 1, close);
        if (raw.includes("<")) throw malformed(`"<" in attribute ${attrName} of <${name}> at ${lineOf(xml, p)}`);
        if (attrs.some((a) => a.name === attrName)) throw malformed(`attribute ${attrName} repeated in <${name}> at ${lineOf(xml, p)}`);
        attrs.push({ name: attrName, value: decodeEntities(raw, () => lineOf(xml, p)), quote });
        at = close + 1;
        attrsEnd = at;
      }
      let leadingSpaceStart = lt;
      while (leadingSpaceStart > 0 && /[ \t\r\n]/.test(xml[leadingSpaceStart - 1]!)) leadingSpaceStart--;
      const element: Element = {
        name,
        attrs,
        start: lt,
        attrsEnd,
        startTagEnd: at,
        end: at,
        leadingSpaceStart,
        selfClosing,
        children: [],
      };
      const parent = stack.at(-1);
      if (parent) parent.children.push(element);
      else root = element;
      if (!selfClosing) stack.push(element);
      i = at;
    }
  }
  if (stack.length > 0) throw malformed(`<${stack.at(-1)!.name}> is never closed`);
  if (root === undefined) throw malformed("there is no root element");
  return { root };
}

/** Skips `<!DOCTYPE …>` including an internal subset `[…]` and quoted literals. */
function skipDeclaration(xml: string, lt: number): number {
  let depth = 0;
  for (let p = lt + 2; p < xml.length; p++) {
    const c = xml[p];
    if (c === '"' || c === "'") {
      const close = xml.indexOf(c, p + 1);
      if (close < 0) break;
      p = close;
    } else if (c === "[") depth++;
    else if (c === "]") depth--;
    else if (c === ">" && depth === 0) return p + 1;
  }
  throw malformed(`unterminated declaration at ${lineOf(xml, lt)}`);
}

const ENTITIES: Record<string, string> = { lt: "<", gt: ">", amp: "&", quot: '"', apos: "'" };

function decodeEntities(raw: string, where: () => string): string {
  return raw.replace(/&([^;]*);?/g, (match, body: string) => {
    if (!match.endsWith(";")) throw malformed(`bare "&" in an attribute value at ${where()}`);
    if (body in ENTITIES) return ENTITIES[body]!;
    const code = /^#x([0-9a-fA-F]+)$/.exec(body)?.[1] ?? /^#(\d+)$/.exec(body)?.[1];
    if (code === undefined) throw malformed(`unknown entity &${body}; at ${where()}`);
    const point = body.startsWith("#x") ? Number.parseInt(code, 16) : Number.parseInt(code, 10);
    if (point > 0x10ffff) throw malformed(`bad character reference &${body}; at ${where()}`);
    return String.fromCodePoint(point);
  });
}

/** The decoded value of an element's attribute, if it has one. */
export function attrValue(element: Element, name: string): string | undefined {
  return element.attrs.find((a) => a.name === name)?.value;
}

/** A name without its namespace prefix (`qemu:arg` → `arg`). */
export function localName(name: string): string {
  return name.slice(name.indexOf(":") + 1);
}

/** A name's namespace prefix (`qemu:arg` → `qemu`), if it has one. */
export function prefixOf(name: string): string | undefined {
  const colon = name.indexOf(":");
  return colon < 0 ? undefined : name.slice(0, colon);
}
