// SPDX-License-Identifier: Apache-2.0
/**
 * Bytes for the bulk phase to move: pseudo-random (xorshift32, seeded), so that both the bridge's
 * guest RAM and the bare stream's source are memory that was really written. A buffer nobody wrote
 * is backed by the kernel's one shared zero page: reading 16 MiB of it reads one 4 KiB page from
 * cache over and over, which made the bare stream's server (and the emulated kernel's page copy)
 * look faster than any server sending real data (docs/performance.md).
 */
export function pseudoRandomBytes(length: number, seed: number): Uint8Array {
  const words = new Uint32Array(Math.ceil(length / 4));
  let x = seed >>> 0 || 0x9e3779b9;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
  return new Uint8Array(words.buffer, 0, length);
}
