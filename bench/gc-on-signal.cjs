// Preloaded into the idle-memory gateway only (node --expose-gc --require bench/gc-on-signal.cjs):
// SIGUSR2 runs a full garbage collection, so RSS is compared at the same GC state before and after
// opening the idle consoles. Nothing else in the gateway changes.
if (typeof globalThis.gc === 'function') {
  process.on('SIGUSR2', () => {
    globalThis.gc();
    globalThis.gc();
  });
}
