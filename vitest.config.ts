import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // One PostgreSQL cluster for the whole run; tests make databases in it (test/helpers/postgres.ts).
    globalSetup: ['test/helpers/global-setup.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    teardownTimeout: 30_000,
    // Child processes (Xvnc, websockify, Chromium, gateways) are easier to reap from forks than threads.
    pool: 'forks',
    fileParallelism: true,
    // CI has 2 cores; the browser and Xvnc tests are CPU-heavy, so more workers only add timeouts.
    maxWorkers: 2,
  },
});
