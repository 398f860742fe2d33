// Server-side enforcement of a ticket's `view_only` claim: the browser → VM byte stream is parsed
// as RFB client messages (RFC 6143 §7.1-7.5) and input is dropped, so a modified page cannot type,
// click, paste or resize. What cannot be parsed is refused rather than passed through.
import { GatewayError } from '../errors.js';

type State = 'version' | 'security' | 'auth' | 'init' | 'messages';

const DROP = true;
const PASS = false;

/** Length of the message at the start of `b`, and whether to drop it; undefined = need more bytes. */
function measure(b: Buffer): { length: number; drop: boolean } | undefined {
  const need = (n: number) => b.length >= n;
  switch (b[0]) {
    case 0: return { length: 20, drop: PASS }; // SetPixelFormat
    case 2: return need(4) ? { length: 4 + 4 * b.readUInt16BE(2), drop: PASS } : undefined; // SetEncodings
    case 3: return { length: 10, drop: PASS }; // FramebufferUpdateRequest
    case 4: return { length: 8, drop: DROP }; // KeyEvent
    case 5: return { length: 6, drop: DROP }; // PointerEvent
    case 6: return need(8) ? { length: 8 + Math.abs(b.readInt32BE(4)), drop: DROP } : undefined; // ClientCutText (negative: extended)
    case 150: return { length: 10, drop: PASS }; // EnableContinuousUpdates
    case 248: return need(9) ? { length: 9 + b.readUInt8(8), drop: PASS } : undefined; // ClientFence
    case 250: return { length: 4, drop: DROP }; // xvp: shutdown, reboot, reset
    case 251: return need(8) ? { length: 8 + 16 * b.readUInt8(6), drop: DROP } : undefined; // SetDesktopSize
    case 255: // QEMU: only the extended key event (subtype 0) is known
      if (!need(2)) return undefined;
      if (b[1] === 0) return { length: 12, drop: DROP };
      throw refuse(`QEMU message subtype ${b[1]}`);
    default:
      throw refuse(`message type ${b[0]}`);
  }
}

function refuse(what: string): GatewayError {
  return new GatewayError('VIEW_ONLY_VIOLATION', `view-only console: cannot pass client ${what}`);
}

export class ViewOnlyFilter {
  private state: State;
  private pending: Buffer = Buffer.alloc(0);

  /** `init`: the gateway did the security handshake with the browser itself; ClientInit is next. */
  constructor(start: 'version' | 'init' = 'version') {
    this.state = start;
  }

  /** Returns the bytes of `chunk` that may reach the VM; throws VIEW_ONLY_VIOLATION on what it cannot parse. */
  filter(chunk: Buffer): Buffer {
    let b = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    const out: Buffer[] = [];
    for (;;) {
      const step = this.step(b);
      if (step === undefined) break;
      if (!step.drop) out.push(step.bytes ?? b.subarray(0, step.length));
      b = b.subarray(step.length);
    }
    this.pending = Buffer.from(b);
    return out.length === 1 ? out[0]! : Buffer.concat(out);
  }

  private step(b: Buffer): { length: number; drop: boolean; bytes?: Buffer } | undefined {
    if (b.length === 0) return undefined;
    switch (this.state) {
      case 'version': {
        if (b.length < 12) return undefined;
        const version = /^RFB 003\.(\d{3})\n$/.exec(b.subarray(0, 12).toString('latin1'));
        // RFB 3.3 lets the server pick the security type, which this client-side parser cannot see.
        if (!version || Number(version[1]) < 7) throw refuse('protocol version (RFB 3.7 or later is needed)');
        this.state = 'security';
        return { length: 12, drop: PASS };
      }
      case 'security':
        if (b[0] === 1) this.state = 'init';
        else if (b[0] === 2) this.state = 'auth';
        else throw refuse(`security type ${b[0]} (None or VNC authentication only)`);
        return { length: 1, drop: PASS };
      case 'auth':
        if (b.length < 16) return undefined;
        this.state = 'init';
        return { length: 16, drop: PASS };
      case 'init':
        this.state = 'messages';
        // Shared flag forced on: a viewer must never disconnect the other clients.
        return { length: 1, drop: PASS, bytes: Buffer.from([1]) };
      case 'messages': {
        const m = measure(b);
        return m === undefined || b.length < m.length ? undefined : m;
      }
    }
  }
}
