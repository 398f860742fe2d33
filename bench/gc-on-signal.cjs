// Preloaded into the idle-memory gateway only (node --expose-gc --require bench/gc-on-signal.cjs):
// SIGUSR2 runs a full garbage collection, so RSS is compared at the same GC state before and after
// opening the idle consoles. With BENCH_MEMORY_FILE set, the main thread's heapUsed after that
// collection is written there, so the bench can tell the JS heap's share of the growth from the
// rest (sockets' native memory, the allocator, the embedded database's thread). Nothing else in
// the gateway changes.
if (typeof globalThis.gc === 'function') {
  const file = process.env.BENCH_MEMORY_FILE;
  process.on('SIGUSR2', () => {
    globalThis.gc();
    globalThis.gc();
    if (file) {
      require('node:fs').writeFileSync(file, JSON.stringify({ heapUsed: process.memoryUsage().heapUsed }));
    }
  });
}
