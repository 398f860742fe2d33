// The benchmark's "VM": a TCP server in its own process (so its CPU is never counted as a proxy's).
// On accept it writes an RFB-style banner, then obeys one command line from the client:
//   "D <n>\n"  send n bytes downstream, then stay open
//   "U <n>\n"  read n bytes (everything after the newline), then answer "K"
//   "E\n"      echo every byte back
//   "S <n>\n"  send the first n bytes of the checksum stream (stream.mjs), then stay open
// A connection that sends nothing stays idle (the idle-console measurement).
// Prints {"port": N} on stdout once listening on 127.0.0.1:0.
import { createServer } from 'node:net';
import { BLOCK, block } from './stream.mjs';

const BANNER = Buffer.from('RFB 003.008\n');
const FILL = Buffer.alloc(256 * 1024, 0x5a);

const server = createServer({ noDelay: true }, (socket) => {
  socket.on('error', () => socket.destroy());
  socket.write(BANNER);
  let head = Buffer.alloc(0);
  let mode; // undefined until the command line arrived
  let remaining = 0;
  const onData = (chunk) => {
    if (mode === 'E') { socket.write(chunk); return; }
    if (mode === 'U') {
      remaining -= chunk.length;
      if (remaining <= 0) { mode = 'done'; socket.write('K'); }
      return;
    }
    if (mode !== undefined) return;
    head = head.length ? Buffer.concat([head, chunk]) : chunk;
    const nl = head.indexOf(10);
    if (nl === -1) { if (head.length > 64) socket.destroy(); return; }
    const [cmd, arg] = head.subarray(0, nl).toString('latin1').split(' ');
    const rest = head.subarray(nl + 1);
    head = Buffer.alloc(0);
    if (cmd === 'D') { mode = 'D'; sendDown(socket, Number(arg)); }
    else if (cmd === 'U') { mode = 'U'; remaining = Number(arg); if (rest.length) onData(rest); else if (remaining <= 0) { mode = 'done'; socket.write('K'); } }
    else if (cmd === 'S') { mode = 'S'; sendStream(socket, Number(arg)); }
    else if (cmd === 'E') { mode = 'E'; if (rest.length) socket.write(rest); }
    else socket.destroy();
  };
  socket.on('data', onData);
});

function sendDown(socket, total) {
  let left = total;
  const pump = () => {
    while (left > 0) {
      const n = Math.min(left, FILL.length);
      left -= n;
      if (!socket.write(n === FILL.length ? FILL : FILL.subarray(0, n))) { socket.once('drain', pump); return; }
    }
  };
  pump();
}

function sendStream(socket, total) {
  let i = 0;
  let left = total;
  const pump = () => {
    while (left > 0) {
      const n = Math.min(left, BLOCK);
      const b = block(i++);
      left -= n;
      if (!socket.write(n === BLOCK ? b : b.subarray(0, n))) { socket.once('drain', pump); return; }
    }
  };
  pump();
}

server.maxConnections = 1e6;
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
