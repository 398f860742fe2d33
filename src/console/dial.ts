// Dialling the VM's console: a checked endpoint (address and port, or socket path), a timeout, the
// browser's departure as an abort, and a DIAL_FAILED that says refused or unreachable.
import { connect, type Socket } from 'node:net';
import { GatewayError } from '../errors.js';
import { VmReads, registerReads } from './vm-reads.js';
import type { VmEndpoint } from './vm-endpoint.js';

/** Connects to a checked endpoint; DIAL_FAILED with the reason on refusal or timeout. */
export function dial(endpoint: VmEndpoint, timeoutMs: number, signal: AbortSignal): Promise<Socket> {
  const what = 'path' in endpoint ? 'the VM console socket' : 'the VM console port';
  return new Promise((resolve, reject) => {
    // Reads land in buffers the byte pump reuses (vm-reads.ts); until it takes over they are stream data.
    const reads = new VmReads();
    const vm = connect({ ...endpoint, noDelay: true, keepAlive: true, keepAliveInitialDelay: 30_000, onread: reads.onread });
    registerReads(vm, reads);
    const timer = setTimeout(() => fail(new GatewayError('DIAL_FAILED', `${what} did not answer within ${timeoutMs / 1000} s`)), timeoutMs);
    const aborted = () => fail(signal.reason);
    signal.addEventListener('abort', aborted, { once: true });
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', aborted);
      vm.off('error', onError);
    };
    function fail(error: unknown) {
      done();
      vm.destroy();
      reject(error);
    }
    function onError(error: NodeJS.ErrnoException) {
      const why = error.code === 'ECONNREFUSED' ? 'refused the connection' : `could not be reached (${error.code ?? 'error'})`;
      fail(new GatewayError('DIAL_FAILED', `${what} ${why}`, { cause: error }));
    }
    vm.on('error', onError);
    vm.once('connect', () => {
      done();
      // Errors after this point are the pump's; keep one listener so none can crash the process
      // (a module-level function: a closure here would keep this whole dial alive with the console).
      vm.on('error', ignoreError);
      resolve(vm);
    });
  });
}

function ignoreError(): void {}
