// SPDX-License-Identifier: Apache-2.0
/**
 * Buffers for encoded KVMI messages, carved out of zero-filled slabs.
 *
 * A bulk read sends and answers one KVMI_VM_READ_PHYSICAL per 4 KiB page (docs/protocol/v9.md),
 * and a `new Uint8Array` per message cost an ArrayBuffer, a backing store, external-memory
 * accounting and a DataView each: in a profile of the bulk benchmark that allocation and the
 * garbage collection it caused were the largest costs of our own (docs/performance.md). Like
 * Node's Buffer pool, small messages share one slab instead; unlike it, a slab is zero-filled and
 * no byte of it is ever handed out twice, so every byte a message does not write (padding, reserved
 * fields, kvmi-abi §2.7) is zero, and no message can see another's bytes. A slab is freed once no
 * message cut from it is referenced (they are written to a socket and dropped).
 */

/** Bytes of one slab: fifteen 4 KiB page replies. */
export const SLAB_BYTES = 64 * 1024;
/** Larger messages get a buffer of their own (they are rare, and would waste a slab's tail). */
export const MAX_SLAB_PIECE_BYTES = 8 * 1024;

/** A zeroed piece of a slab: `bytes` is the piece, `view` spans the whole slab, `at` is where it starts in `view`. */
export interface SlabPiece {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  readonly at: number;
}

let slab = new Uint8Array(0);
let slabView = new DataView(slab.buffer);
let used = 0;

/**
 * `size` zero bytes nobody else holds. Pieces are 8-byte aligned (as the kernel's messages are
 * laid out), so that a piece's 64-bit fields stay aligned within the slab too.
 */
export function allocateZeroed(size: number): SlabPiece {
  if (size > MAX_SLAB_PIECE_BYTES) {
    const bytes = new Uint8Array(size);
    return { bytes, view: new DataView(bytes.buffer), at: 0 };
  }
  if (used + size > slab.length) {
    slab = new Uint8Array(SLAB_BYTES);
    slabView = new DataView(slab.buffer);
    used = 0;
  }
  const at = used;
  used = (at + size + 7) & ~7;
  return { bytes: slab.subarray(at, at + size), view: slabView, at };
}

/** Where an encoder gets its message's buffer: {@link allocateZeroed} unless the writer has an {@link Outbox}. */
export interface MessageAllocator {
  allocate(size: number): SlabPiece;
}

/** The default allocator: fresh pieces of the shared slabs. */
export const FRESH_PIECES: MessageAllocator = { allocate: allocateZeroed };

/** Bytes of one outbox slab. */
const OUTBOX_SLAB_BYTES = 256 * 1024;
/** Slabs an outbox keeps for reuse once they are written. */
const OUTBOX_SPARE_SLABS = 4;

interface OutboxSlab {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  /** Writes of this slab's bytes not completed yet. */
  writes: number;
  /** True once no more messages go into it: reusable after its last write completes. */
  full: boolean;
  /** Bytes handed out of it (what is zeroed again before reuse). */
  used: number;
}

/**
 * The messages one writer sends on one byte stream, encoded in place into slabs that are reused
 * once the stream has taken their bytes, and written back to back in one write per
 * {@link flush} (a tick's replies to a burst of page reads: one write instead of one per message).
 *
 * Fresh memory is what a slab of its own per message costs most on bulk reads: the first touch of
 * every new page of it is a page fault (docs/performance.md). A reused slab is zeroed again before
 * it is handed out, so bytes an encoder skips (padding) are still zero, as with fresh slabs.
 *
 * Use: {@link allocate} a piece, encode into it, then {@link commit} it (in send order); a piece
 * allocated and not committed (its encoder threw) is zeroed and handed out again. Messages encoded
 * elsewhere are copied in with {@link append}, so that everything keeps its order.
 */
export class Outbox implements MessageAllocator {
  private slab: OutboxSlab;
  private readonly spare: OutboxSlab[] = [];
  /** Start of the committed bytes not written yet. */
  private flushed = 0;
  /** End of the committed bytes. */
  private committed = 0;
  /** End of the piece handed out and not committed yet (equals `committed` when none). */
  private reserved = 0;

  /**
   * @param write writes `bytes` (whole messages) to the stream and calls `done` once the stream no
   *   longer needs them (Node's `socket.write(bytes, done)`); `done` may never come if the stream
   *   is destroyed, which only means that slab is not reused.
   */
  constructor(private readonly write: (bytes: Uint8Array, done: () => void) => void) {
    this.slab = Outbox.newSlab();
  }

  /** True when committed messages wait for {@link flush}. */
  get hasPending(): boolean {
    return this.committed > this.flushed;
  }

  allocate(size: number): SlabPiece {
    if (this.reserved > this.committed) this.slab.bytes.fill(0, this.committed, this.reserved);
    if (size > OUTBOX_SLAB_BYTES) {
      this.reserved = this.committed;
      return allocateZeroed(size);
    }
    if (this.committed + size > this.slab.bytes.length) this.nextSlab();
    const at = this.committed;
    this.reserved = at + size;
    return { bytes: this.slab.bytes.subarray(at, at + size), view: this.slab.view, at };
  }

  /** Queues `message`, the piece last {@link allocate}d (encoded), for the next {@link flush}. */
  commit(message: Uint8Array): void {
    if (message.buffer === this.slab.bytes.buffer && message.byteOffset === this.committed && this.committed + message.byteLength === this.reserved) {
      this.committed = this.reserved;
      return;
    }
    this.append(message);
  }

  /** Queues a copy of a message encoded elsewhere, after those queued before. */
  append(message: Uint8Array): void {
    if (message.byteLength > OUTBOX_SLAB_BYTES) {
      // Larger than a slab (never for KVMI messages, whose size the dialect caps): written as it is.
      this.flush();
      this.write(message, () => undefined);
      return;
    }
    const piece = this.allocate(message.byteLength);
    piece.bytes.set(message);
    this.committed = this.reserved;
  }

  /** Writes the queued messages in one write. */
  flush(): void {
    if (this.committed === this.flushed) return;
    const slab = this.slab;
    slab.writes++;
    this.write(slab.bytes.subarray(this.flushed, this.committed), () => this.written(slab));
    this.flushed = this.committed;
  }

  private nextSlab(): void {
    this.flush();
    const old = this.slab;
    old.full = true;
    // Its bytes past `committed` were never handed out, or were zeroed again (allocate).
    old.used = this.committed;
    this.slab = this.spare.pop() ?? Outbox.newSlab();
    this.flushed = this.committed = this.reserved = 0;
    if (old.writes === 0) this.recycle(old);
  }

  private written(slab: OutboxSlab): void {
    if (--slab.writes === 0 && slab.full) this.recycle(slab);
  }

  private recycle(slab: OutboxSlab): void {
    if (this.spare.length >= OUTBOX_SPARE_SLABS) return;
    slab.bytes.fill(0, 0, slab.used);
    slab.full = false;
    slab.used = 0;
    this.spare.push(slab);
  }

  private static newSlab(): OutboxSlab {
    const bytes = new Uint8Array(OUTBOX_SLAB_BYTES);
    return { bytes, view: new DataView(bytes.buffer), writes: 0, full: false, used: 0 };
  }
}
