// The socket the gateway listens on: HTTP or HTTPS (TLS_CERT_FILE/TLS_KEY_FILE), optionally behind
// a PROXY protocol front, with header and request deadlines that are actually enforced. Node checks
// them only every connectionsCheckingInterval (30 s by default), so a slow-header socket would
// live far past HEADERS_TIMEOUT_SECONDS; checking every second bounds it to the timeout + 1 s.
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { AddressInfo, Server as NetServer } from 'node:net';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { createProxyProtocolFront } from './proxy-protocol.js';
import { readTlsPair, watchTlsPair } from './tls.js';

export interface Listener {
  /** The HTTP(S) server: 'request', 'upgrade', 'connection' and 'clientError' are heard here. */
  readonly server: Server;
  readonly secure: boolean;
  listen(): Promise<AddressInfo>;
  /** Stops accepting; like server.close(), it leaves upgraded sockets to the caller. */
  close(): Promise<void>;
}

const CHECK_INTERVAL_MS = 1_000;
// A request body (the control API's JSON) gets this long after its headers arrived.
const BODY_GRACE_MS = 20_000;

export async function createListener(config: Config, log: Logger, onRequest: (req: IncomingMessage, res: ServerResponse) => void): Promise<Listener> {
  const edge = config.edge;
  const headersTimeout = config.headersTimeoutSeconds * 1000;
  const options = {
    headersTimeout,
    requestTimeout: headersTimeout + BODY_GRACE_MS,
    connectionsCheckingInterval: CHECK_INTERVAL_MS,
    // Behind a balancer that pools connections, close idle ones before it reuses them (its own
    // idle timeout is usually 60 s or more): a bit over the usual 5 s keeps Node's default.
    keepAliveTimeout: 5_000,
  };
  let stopWatching = () => {};
  let server: Server;
  if (edge.tlsCertFile !== undefined && edge.tlsKeyFile !== undefined) {
    const files = { certFile: edge.tlsCertFile, keyFile: edge.tlsKeyFile };
    const https: HttpsServer = createHttpsServer({ ...options, ...(await readTlsPair(files)) }, onRequest);
    stopWatching = watchTlsPair(https, files, log);
    server = https as unknown as Server;
  } else {
    server = createHttpServer(options, onRequest);
  }
  const front: NetServer | undefined = edge.proxyProtocol ? createProxyProtocolFront(server, { timeoutMs: headersTimeout, log }) : undefined;
  const listening: NetServer = front ?? server;
  return {
    server,
    secure: edge.tlsCertFile !== undefined,
    listen: () =>
      new Promise((resolve, reject) => {
        listening.once('error', reject);
        listening.listen(config.port, config.host, () => {
          listening.off('error', reject);
          resolve(listening.address() as AddressInfo);
        });
      }),
    close: async () => {
      stopWatching();
      // With a front, the HTTP server never listened itself; close() still ends its idle connections' bookkeeping.
      await Promise.all([
        new Promise((resolve) => listening.close(resolve)),
        ...(front !== undefined ? [new Promise((resolve) => server.close(resolve))] : []),
      ]);
    },
  };
}
