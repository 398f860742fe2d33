// The yardstick relay: what a developer writes in 50 lines with ws and net — each WebSocket
// connection dialled to the VM, bytes both ways with backpressure, no tickets, no database.
// Usage: node bench/relay.mjs PORT VM_PORT
import net from 'node:net';
import { WebSocketServer } from 'ws';

const [port, vmPort] = process.argv.slice(2).map(Number);
const HIGH_WATER_MARK = 256 * 1024;
const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false, maxPayload: 0, handleProtocols: (p) => (p.has('binary') ? 'binary' : false) });
wss.on('connection', (ws) => {
  ws.pause();
  const vm = net.connect({ host: '127.0.0.1', port: vmPort, noDelay: true });
  vm.on('connect', () => ws.resume());
  vm.on('data', (chunk) => {
    const over = ws.bufferedAmount + chunk.length > HIGH_WATER_MARK;
    ws.send(chunk, { binary: true }, over ? () => vm.resume() : undefined);
    if (over) vm.pause();
  });
  vm.on('drain', () => ws.resume());
  ws.on('message', (data) => {
    if (!vm.write(data)) ws.pause();
  });
  vm.on('error', () => ws.terminate());
  vm.on('close', () => ws.close());
  ws.on('close', () => vm.destroy());
  ws.on('error', () => vm.destroy());
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
