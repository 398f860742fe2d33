// A PostgreSQL outage on demand: a TCP forwarder in front of the test cluster's unix socket that
// can be cut (every connection dropped, the port refusing) and restored on the same port.
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';

export interface DatabaseLink {
  /** The database's URL through the forwarder (TCP on 127.0.0.1). */
  url: string;
  /** Drops every connection and stops listening: connects are refused until restore(). */
  cut(): Promise<void>;
  restore(): Promise<void>;
  close(): Promise<void>;
}

/** `databaseUrl` is a test database URL with `?host=<socket dir>` (test/helpers/postgres.ts). */
export async function startDatabaseLink(databaseUrl: string): Promise<DatabaseLink> {
  const direct = new URL(databaseUrl);
  const socketPath = join(direct.searchParams.get('host')!, '.s.PGSQL.5432');
  const sockets = new Set<Socket>();
  let server: Server | undefined;
  let port = 0;
  const listen = async () => {
    server = createServer((client) => {
      const upstream = connect(socketPath);
      for (const s of [client, upstream]) {
        sockets.add(s);
        s.on('close', () => sockets.delete(s));
        s.on('error', () => {});
      }
      client.pipe(upstream).pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    await new Promise<void>((resolve) => server!.listen(port, '127.0.0.1', resolve));
    port = (server.address() as { port: number }).port;
  };
  const cut = async () => {
    const closed = new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
    for (const s of sockets) s.destroy();
    await closed;
    server = undefined;
  };
  await listen();
  const url = new URL(databaseUrl);
  url.host = `127.0.0.1:${port}`;
  url.search = '';
  return { url: url.toString(), cut, restore: listen, close: cut };
}
