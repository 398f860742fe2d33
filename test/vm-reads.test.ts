// The pumps' read buffers: a slab that a queued write still holds is never read into, and slabs
// come back for reuse once their writes completed. A scripted Writable completes writes when told,
// which a kernel socket does only by chance. Buffers are compared by identity (which one is read
// into), not by content.
import type { Socket } from 'node:net';
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { SHARED_VIEW, SlabWrites, VmReads } from '../src/console/vm-reads.js';

function scriptedOut() {
  const pending: (() => void)[] = [];
  const out = new Writable({
    write(_chunk, _encoding, done) {
      pending.push(() => done());
    },
  });
  return { out: out as unknown as Socket, completeOne: () => pending.shift()!() };
}

describe('SlabWrites', () => {
  it('never reads into a slab a queued write still holds, and reuses it once the write completed', () => {
    const { out, completeOne } = scriptedOut();
    const reads = new VmReads();
    const slabs = new SlabWrites(reads, out, () => {});
    // A read that filled the shared buffer: the VM streams, the next read gets a slab.
    slabs.afterRead(SHARED_VIEW.length, SHARED_VIEW, false);
    const a = reads.next;
    expect(a === SHARED_VIEW).toBe(false);
    expect(slabs.slabOf(a)).toBeDefined();

    // A full read into it, written and still queued: the next read goes to another slab.
    slabs.write(a);
    slabs.afterRead(a.length, a, false);
    const b = reads.next;
    expect(b === a).toBe(false);
    expect(b === SHARED_VIEW).toBe(false);

    // Its write completed before the next read: the same slab is read into again.
    slabs.write(b);
    completeOne();
    completeOne();
    slabs.afterRead(b.length, b, false);
    expect(reads.next === b).toBe(true);

    // A short read: the VM stopped streaming; the slab goes back and the shared buffer is next.
    slabs.afterRead(100, b, false);
    expect(reads.next === SHARED_VIEW).toBe(true);
    // Streaming again takes a slab from the pool (the one just returned), not a fresh one.
    slabs.afterRead(SHARED_VIEW.length, SHARED_VIEW, false);
    expect(reads.next === b).toBe(true);
  });

  it('reads into the shared buffer while the pump is parked, and holds only what its writes hold', () => {
    const { out, completeOne } = scriptedOut();
    const reads = new VmReads();
    let written = 0;
    const slabs = new SlabWrites(reads, out, () => written++);
    slabs.afterRead(SHARED_VIEW.length, SHARED_VIEW, false);
    const a = reads.next;
    slabs.write(a);
    // Parked behind a slow browser: no slab of its own to read into.
    slabs.afterRead(a.length, a, true);
    expect(reads.next === SHARED_VIEW).toBe(true);
    completeOne();
    expect(written).toBe(1);
    // Streaming again after the drain reuses the slab the write gave back.
    slabs.afterRead(SHARED_VIEW.length, SHARED_VIEW, false);
    expect(reads.next === a).toBe(true);
  });
});
