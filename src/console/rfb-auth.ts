// The RFB security handshake (RFC 6143 §7.1-7.2), both sides, for consoles whose VNC password is
// stored with the target: the gateway authenticates to the VM itself (`authenticateVm`, also used
// by the readiness probe, diagnose and screenshots) and offers the browser security type None
// (`offerNone`), so the page connects without a prompt and no viewer ever learns the password.
// Each side stops right after SecurityResult: ClientInit and ServerInit are the pump's to relay.
import { createCipheriv } from 'node:crypto';
import { GatewayError } from '../errors.js';
import type { Credentials } from './credentials.js';
import type { RfbIo } from './rfb-io.js';

const NONE = 1;
const VNC_AUTH = 2;
const MAX_REASON_BYTES = 4096;

/** "RFB 003.008\n" → 8; undefined for anything that is not an RFB 3.x banner. */
function minorOf(banner: Buffer): number | undefined {
  const match = /^RFB 003\.(\d{3})\n$/.exec(banner.toString('latin1'));
  return match ? Number(match[1]) : undefined;
}

const banner = (minor: number) => Buffer.from(`RFB 003.00${minor}\n`, 'latin1');

async function readReason(io: RfbIo): Promise<string> {
  const length = (await io.read(4)).readUInt32BE(0);
  if (length > MAX_REASON_BYTES) return 'no reason given';
  const text = (await io.read(length)).toString('utf8').replace(/[^\x20-\x7e]/g, ' ').trim();
  return text === '' ? 'no reason given' : text;
}

/**
 * The VNC authentication response: the challenge DES-encrypted with the password's first 8 bytes,
 * each byte's bits mirrored (a quirk of the original VNC code that every server implements).
 * OpenSSL 3 moved single DES to its legacy provider, so Node refuses 'des-ecb'; two-key triple DES
 * with both keys equal (E_K D_K E_K) is exactly single DES and stays in the default provider.
 */
export function vncAuthResponse(password: string, challenge: Buffer): Buffer {
  const key = Buffer.alloc(8);
  Buffer.from(password, 'latin1').copy(key, 0, 0, 8);
  for (let i = 0; i < 8; i++) {
    let b = key[i]!;
    b = ((b & 0xf0) >> 4) | ((b & 0x0f) << 4);
    b = ((b & 0xcc) >> 2) | ((b & 0x33) << 2);
    key[i] = ((b & 0xaa) >> 1) | ((b & 0x55) << 1);
  }
  const cipher = createCipheriv('des-ede-ecb', Buffer.concat([key, key]), null);
  cipher.setAutoPadding(false);
  return Buffer.concat([cipher.update(challenge), cipher.final()]);
}

function vmRefused(message: string): GatewayError {
  return new GatewayError('DIAL_FAILED', message);
}

/** Picks None when the VM offers it, else VNC authentication when a password is stored. */
function choose(types: readonly number[], credentials: Credentials | undefined): number {
  if (types.includes(NONE)) return NONE;
  if (types.includes(VNC_AUTH)) {
    if (credentials !== undefined) return VNC_AUTH;
    throw vmRefused('the VM console asks for a password: store it with the target (target.credentials)');
  }
  throw vmRefused(`the VM console offers no security type the gateway speaks (offered: ${types.join(', ') || 'none'}; None or VNC authentication only)`);
}

/**
 * Runs the client side with the VM up to SecurityResult. Throws VM_AUTH_FAILED when the VM refuses
 * the password, DIAL_FAILED with a reason for anything else it refuses. Returns the RFB minor
 * version agreed (3, 7 or 8).
 */
export async function authenticateVm(io: RfbIo, credentials: Credentials | undefined): Promise<number> {
  const offered = minorOf(await io.read(12));
  if (offered === undefined) throw vmRefused('the VM console did not send an RFB 3.x banner');
  const minor = offered >= 8 ? 8 : offered === 7 ? 7 : 3;
  io.write(banner(minor));
  let type: number;
  if (minor === 3) {
    // RFB 3.3: the server decides, as a 32-bit type; 0 carries a failure reason.
    type = (await io.read(4)).readUInt32BE(0);
    if (type === 0) throw vmRefused(`the VM refused the console connection: ${await readReason(io)}`);
    choose([type], credentials);
  } else {
    const count = (await io.read(1))[0]!;
    if (count === 0) throw vmRefused(`the VM refused the console connection: ${await readReason(io)}`);
    type = choose([...(await io.read(count))], credentials);
    io.write(Buffer.from([type]));
  }
  if (type === VNC_AUTH) io.write(vncAuthResponse(credentials!.password, await io.read(16)));
  // SecurityResult: always in 3.8; before that, only after VNC authentication.
  if (type === NONE && minor < 8) return minor;
  if ((await io.read(4)).readUInt32BE(0) !== 0) {
    // The VM's own reason ("Authentication failed", "too many attempts") is read but not shown:
    // the person at the page can only act on "the stored credentials are wrong".
    if (minor === 8) await readReason(io).catch(() => '');
    throw type === VNC_AUTH
      ? new GatewayError('VM_AUTH_FAILED', 'the VM refused the stored console credentials')
      : vmRefused('the VM refused the console connection');
  }
  return minor;
}

/**
 * Runs the server side with the browser: offers RFB 3.8 and security type None only, and answers
 * SecurityResult OK. Throws BAD_REQUEST when the browser does not speak RFB 3.3-3.8.
 */
export async function offerNone(io: RfbIo): Promise<void> {
  io.write(banner(8));
  const minor = minorOf(await io.read(12));
  if (minor === undefined) throw new GatewayError('BAD_REQUEST', 'the browser did not answer with an RFB 3.x version');
  if (minor < 7) {
    io.write(Buffer.from([0, 0, 0, NONE]));
    return;
  }
  io.write(Buffer.from([1, NONE]));
  const chosen = (await io.read(1))[0];
  if (chosen !== NONE) throw new GatewayError('BAD_REQUEST', `the browser chose security type ${chosen}; only None is offered`);
  if (minor >= 8) io.write(Buffer.from([0, 0, 0, 0]));
}
