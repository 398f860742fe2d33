// The ops port of the sidecar commands (`gate`, `reconcile`): /healthz, /readyz and /metrics on
// OPS_PORT, for Kubernetes probes and Prometheus. Nothing else is served there.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { handleOps, type OpsDeps } from './ops-endpoints.js';

export interface OpsServer {
  readonly url: string;
  close(): Promise<void>;
}

export async function startOpsServer(deps: OpsDeps & { host: string; port: number; log: Logger }): Promise<OpsServer> {
  const server: Server = createServer({ headersTimeout: 10_000, requestTimeout: 15_000, connectionsCheckingInterval: 1_000 }, (req, res) => {
    const path = (req.url ?? '/').split('?')[0]!;
    handleOps(deps, req, res, path)
      .then((handled) => handled || res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found\n'))
      .catch((error: unknown) => {
        deps.log.error({ err: error, path }, 'ops endpoint failed');
        if (!res.headersSent) res.writeHead(500).end();
        else res.destroy();
      });
  });
  server.on('clientError', (_error, socket) => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(deps.port, deps.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { address, port } = server.address() as AddressInfo;
  const url = `http://${address.includes(':') ? `[${address}]` : address}:${port}`;
  deps.log.info({ url }, 'ops endpoints listening (/healthz, /readyz, /metrics)');
  return {
    url,
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
