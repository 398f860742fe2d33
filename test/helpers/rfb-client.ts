// A minimal RFB client for tests that talk to the gateway as noVNC would: version exchange,
// security None (the gateway's offer when it holds the VM's password), ClientInit, ServerInit.
import { WebSocket } from 'ws';
import { webSocketIo, type RfbIo } from '../../src/console/rfb-io.js';

export interface ServerInit {
  width: number;
  height: number;
  name: string;
  /** The security types the gateway offered the browser. */
  offered: number[];
}

/** Runs the client handshake on `io` up to ServerInit; asserts nothing, returns what it saw. */
export async function handshakeAsBrowser(io: RfbIo): Promise<ServerInit> {
  const version = (await io.read(12)).toString('latin1');
  if (version !== 'RFB 003.008\n') throw new Error(`unexpected banner ${JSON.stringify(version)}`);
  io.write(Buffer.from('RFB 003.008\n'));
  const count = (await io.read(1))[0]!;
  const offered = [...(await io.read(count))];
  io.write(Buffer.from([1]));
  const result = (await io.read(4)).readUInt32BE(0);
  if (result !== 0) throw new Error(`SecurityResult ${result}`);
  io.write(Buffer.from([1])); // ClientInit, shared
  const init = await io.read(24);
  const name = (await io.read(init.readUInt32BE(20))).toString('utf8');
  return { width: init.readUInt16BE(0), height: init.readUInt16BE(2), name, offered };
}

/** Opens a console WebSocket and resolves once it is open (rejects on an early close). */
export function openSocket(url: string): Promise<{ ws: WebSocket; io: RfbIo; closed: Promise<[number, string]> }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, ['binary']);
    const io = webSocketIo(ws); // listening from the start: the banner may follow the 101 at once
    ws.on('error', () => {});
    const closed = new Promise<[number, string]>((r) => ws.on('close', (code, reason) => r([code, reason.toString()])));
    ws.once('open', () => resolve({ ws, io, closed }));
    closed.then(([code, reason]) => reject(new Error(`closed ${code} ${reason}`)));
  });
}
