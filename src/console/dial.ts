// Dialling the VM's console port: a checked literal address, a timeout, the browser's departure as
// an abort, and a DIAL_FAILED that says refused or unreachable.
import { connect, type Socket } from 'node:net';
import { GatewayError } from '../errors.js';
import { VmReads, registerReads } from './vm-reads.js';

/** Connects to a checked address; DIAL_FAILED with the reason on refusal or timeout. */
export function dial(address: string, port: number, timeoutMs: number, signal: AbortSignal): Promise<Socket> {
  return new Promise((resolve, reject) => {
    // Reads land in buffers the byte pump reuses (vm-reads.ts); until it takes over they are stream data.
    const reads = new VmReads();
    const vm = connect({ host: address, port, noDelay: true, keepAlive: true, keepAliveInitialDelay: 30_000, onread: reads.onread });
    registerReads(vm, reads);
    const timer = setTimeout(() => fail(new GatewayError('DIAL_FAILED', `the VM console port did not answer within ${timeoutMs / 1000} s`)), timeoutMs);
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
      fail(new GatewayError('DIAL_FAILED', `the VM console port ${why}`, { cause: error }));
    }
    vm.on('error', onError);
    vm.once('connect', () => {
      done();
      // Errors after this point are the pump's; keep one listener so none can crash the process.
      vm.on('error', () => {});
      resolve(vm);
    });
  });
}
