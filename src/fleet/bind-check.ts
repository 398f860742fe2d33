// PORT_BIND_CHECK: before leasing a pool port, try to bind it on this host. A port another program
// holds (a websockify left over from before the pool, an unrelated service) is skipped and recorded
// instead of handed to a VM that would then fail with "Address already in use". The check is a
// hint, not a reservation: the lease is what reserves the port among console-gateway's users.
import { createServer } from 'node:net';

/** Resolves true when nothing on this host listens on `port` (all IPv4 addresses), false otherwise. */
export function canBind(port: number, host = '0.0.0.0'): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen({ port, host, exclusive: true }, () => server.close(() => resolve(true)));
  });
}
