// GET /api/v1/sessions/:id/screenshot: a PNG of the console as it is now, for dashboards of many
// labs. The gateway connects to the VM as one more shared RFB client (over TCP, or over the
// target's WebSocket for websockify sessions), with the stored credentials if any. Bounded: one
// screenshot at a time per session and a few per process, a deadline over the whole capture, and
// a pixel limit checked before any pixel is asked for.
import { encode } from 'fast-png';
import type { Kysely } from 'kysely';
import { WebSocket } from 'ws';
import { isIP } from 'node:net';
import type { Config } from '../config.js';
import { openCredentials } from '../console/credentials.js';
import { dial } from '../console/dial.js';
import { authenticateVm } from '../console/rfb-auth.js';
import { captureFrame, scaleDown, type Frame } from '../console/rfb-capture.js';
import { bounded, socketIo, webSocketIo, type RfbIo } from '../console/rfb-io.js';
import { checkTarget, rulesOf, type VmEndpoint } from '../console/vm-endpoint.js';
import { isConnectable } from '../console/wait.js';
import type { Database, SessionRow } from '../db/schema.js';
import { requireSession, targetOf } from '../db/sessions.js';
import { GatewayError } from '../errors.js';

export interface ScreenshotLimits {
  timeoutMs: number;
  /** Width × height beyond which a screen is refused (16 Mpx = 64 MiB while decoding). */
  maxPixels: number;
  /** Screenshots in progress at once in this process. */
  maxConcurrent: number;
}

export const DEFAULT_SCREENSHOT_LIMITS: ScreenshotLimits = { timeoutMs: 10_000, maxPixels: 4096 * 4096, maxConcurrent: 4 };

export class Screenshots {
  private readonly busy = new Set<string>();

  constructor(
    private readonly config: Config,
    private readonly db: Kysely<Database>,
    private readonly limits: ScreenshotLimits = DEFAULT_SCREENSHOT_LIMITS,
  ) {}

  /** The PNG of session `id`'s screen, at most `maxWidth` wide. Throws CONFLICT when not ready or busy. */
  async take(id: string, maxWidth: number | undefined): Promise<Uint8Array> {
    const row = await requireSession(this.db, id);
    if (!isConnectable(row, this.config.readyGatingEnabled)) {
      throw new GatewayError('CONFLICT', `the session is ${row.status}: a screenshot needs a ready console`);
    }
    if (this.busy.has(row.id)) throw new GatewayError('CONFLICT', 'a screenshot of this session is being taken; try again shortly');
    if (this.busy.size >= this.limits.maxConcurrent) throw new GatewayError('CAPACITY', 'too many screenshots in progress; try again shortly');
    this.busy.add(row.id);
    let frame: Frame;
    try {
      frame = await this.capture(row);
    } finally {
      this.busy.delete(row.id);
    }
    const scaled = maxWidth === undefined ? frame : scaleDown(frame, maxWidth);
    return encode({ width: scaled.width, height: scaled.height, data: scaled.rgb, channels: 3, depth: 8 });
  }

  private async capture(row: SessionRow): Promise<Frame> {
    const { config, limits } = this;
    const deadline = AbortSignal.timeout(limits.timeoutMs);
    const credentials = openCredentials(config.credentialsKey, row.id, row.target_credentials);
    const endpoint = await checkTarget(targetOf(row)!, rulesOf(config));
    const connectMs = Math.min(limits.timeoutMs, config.connectTimeoutSeconds * 1000);
    const { io, cancel } =
      row.protocol === 'websockify' && 'host' in endpoint
        ? await openWebSocket(endpoint.host, row, connectMs)
        : await openVnc(endpoint, connectMs, deadline);
    try {
      return await bounded(
        async () => {
          await authenticateVm(io, credentials);
          return captureFrame(io, limits.maxPixels);
        },
        {
          timeoutMs: limits.timeoutMs,
          cancel,
          timedOut: () => new GatewayError('SCREENSHOT_TIMEOUT', `the VM did not send its screen within ${limits.timeoutMs / 1000} s`),
          closed: () => new GatewayError('SCREENSHOT_FAILED', 'the VM closed the connection before the screenshot was complete'),
        },
      );
    } finally {
      io.release();
      cancel();
    }
  }
}

async function openVnc(endpoint: VmEndpoint, timeoutMs: number, signal: AbortSignal): Promise<{ io: RfbIo; cancel(): void }> {
  const vm = await dial(endpoint, timeoutMs, signal);
  return { io: socketIo(vm), cancel: () => vm.destroy() };
}

/** RFB over the websockify target's own WebSocket (subprotocol `binary`), dialled at the checked address. */
function openWebSocket(address: string, row: SessionRow, timeoutMs: number): Promise<{ io: RfbIo; cancel(): void }> {
  const raw = row.target_path ?? '/';
  const path = raw.startsWith('/') ? raw : `/${raw}`;
  const host = (h: string) => (isIP(h) === 6 ? `[${h}]` : h);
  const ws = new WebSocket(`ws://${host(address)}:${row.target_port}${path}`, ['binary'], {
    headers: { host: `${host(row.target_host!)}:${row.target_port}` },
    perMessageDeflate: false,
    followRedirects: false,
    handshakeTimeout: timeoutMs,
  });
  const io = webSocketIo(ws); // listening from the start: the banner may follow the 101 at once
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve({ io, cancel: () => ws.terminate() }));
    ws.once('unexpected-response', (req, res) => {
      res.resume();
      req.destroy();
      reject(new GatewayError('DIAL_FAILED', `the VM's websockify refused the WebSocket (HTTP ${res.statusCode})`));
    });
    // Kept for the socket's life: an 'error' nobody hears would crash the process.
    ws.on('error', (error: NodeJS.ErrnoException) =>
      reject(new GatewayError('DIAL_FAILED', `the VM's websockify could not be reached (${error.code ?? 'error'})`)),
    );
  });
}
