// The checksum stream: 64 KiB blocks of fixed pseudo-random bytes, each stamped with its index in
// its first 8 bytes. A lost, duplicated or reordered byte anywhere changes the SHA-256, and a whole
// block out of place changes it too. The VM (vm-server.mjs, command "S n") sends it; the bench
// hashes what arrives and compares with expectedSha256(n).
import { createCipheriv, createHash } from 'node:crypto';

export const BLOCK = 64 * 1024;
const BASE = createCipheriv('aes-128-ctr', Buffer.alloc(16, 7), Buffer.alloc(16, 3)).update(Buffer.alloc(BLOCK));

/** Block `i` of the stream (a fresh buffer the caller may hand to a socket). */
export function block(i) {
  const b = Buffer.from(BASE);
  b.writeBigUInt64LE(BigInt(i), 0);
  return b;
}

export function expectedSha256(total) {
  const hash = createHash('sha256');
  const stamp = Buffer.alloc(8);
  for (let i = 0, left = total; left > 0; i++, left -= BLOCK) {
    stamp.writeBigUInt64LE(BigInt(i), 0);
    const n = Math.min(BLOCK, left);
    hash.update(stamp.subarray(0, Math.min(8, n)));
    if (n > 8) hash.update(BASE.subarray(8, n));
  }
  return hash.digest('hex');
}
