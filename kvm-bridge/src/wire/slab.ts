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
