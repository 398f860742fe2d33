// The console page: reads the one-time ticket, opens the gateway's WebSocket and hands it to
// noVNC. Served with `script-src 'self'`, so everything lives here, nothing inline.
import RFB from '../novnc/core/rfb.js';

// Words for close codes whose frame carried no reason (README "What the browser sees").
const CLOSE_WORDS = {
  1000: 'the console was closed',
  1001: 'the gateway is shutting down',
  1005: 'the connection was closed',
  1006: 'connection lost',
  1011: 'internal error in the gateway',
  1013: 'the console is temporarily unavailable',
  4400: 'no ticket',
  4401: 'the console link is invalid, expired or already used',
  4403: 'not allowed',
  4404: 'unknown console session',
  4408: 'the console was idle too long or reached its maximum duration',
  4409: 'the console session has ended',
  4502: 'the VM console is unreachable',
};

// How long a pending handshake may look like plain "connecting": the gateway completes the
// upgrade only once the VM console is reachable, so a longer wait means the VM is starting.
const WAITING_AFTER_MS = 1000;

// Closes that mean "not now" rather than "no": draining, try again later, VM unreachable.
const RETRYABLE = new Set([1001, 1013, 4502]);

const $ = (id) => document.getElementById(id);
const status = $('status');
const screen = $('screen');
const ctrlAltDel = $('ctrl-alt-del');
const fullscreen = $('fullscreen');
const pasteText = $('paste-text');
const pasteSend = $('paste-send');
const clipboard = $('clipboard');
const passwordDialog = $('password-dialog');
const password = $('password');

/** Shows a state in words; browser tests read the data- attributes. */
function setStatus(state, text, close) {
  status.dataset.state = state;
  status.textContent = text;
  if (close) {
    if (close.code !== undefined) status.dataset.closeCode = String(close.code);
    status.dataset.closeReason = close.reason;
  }
  const connected = state === 'connected';
  ctrlAltDel.disabled = !connected || viewOnly;
  pasteSend.disabled = !connected || viewOnly;
  if (!connected) passwordDialog.hidden = true;
}

/** Takes the ticket out of the address bar (and so out of history, bookmarks and screenshots). */
function takeTicket() {
  const url = new URL(location.href);
  const ticket = url.searchParams.get('ticket') || url.searchParams.get('token');
  url.searchParams.delete('ticket');
  url.searchParams.delete('token');
  history.replaceState(history.state, '', url.pathname + url.search + url.hash);
  return ticket;
}

/**
 * The ticket's `view_only` claim. Display only: the page does not verify the signature, the
 * gateway enforces the claim; this just keeps the UI honest about what will work.
 */
function isViewOnly(ticket) {
  try {
    const payload = ticket.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(payload.padEnd(Math.ceil(payload.length / 4) * 4, '='))).view_only === true;
  } catch {
    return false;
  }
}

/** `ws(s)://host/<base>/websockify`, relative to this page so a proxy path prefix still works. */
function socketUrl() {
  const url = new URL('websockify', location.href);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  url.search = '';
  url.hash = '';
  return url.href;
}

const ticket = takeTicket();
const viewOnly = ticket ? isViewOnly(ticket) : false;
$('view-only').hidden = !viewOnly;

// Fullscreen works whether or not a console connects.
fullscreen.addEventListener('click', () => {
  if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
  else document.documentElement.requestFullscreen().catch(() => {});
});
document.addEventListener('fullscreenchange', () => {
  fullscreen.setAttribute('aria-pressed', String(Boolean(document.fullscreenElement)));
});

if (!ticket) {
  setStatus('disconnected', 'Disconnected: no ticket in the console link', { reason: 'no ticket in the console link' });
} else {
  connect(ticket);
}

function connect(ticket) {
  setStatus('connecting', 'Connecting…');
  // The ticket travels as a subprotocol beside 'binary' so it never appears in a URL or log.
  const socket = new WebSocket(socketUrl(), ['binary', 'ticket.' + ticket]);
  socket.binaryType = 'arraybuffer';

  const waiting = setTimeout(() => {
    if (socket.readyState === WebSocket.CONNECTING) setStatus('waiting', 'Waiting for the VM to be ready…');
  }, WAITING_AFTER_MS);

  // noVNC takes the socket's on* handlers; ours is a listener so both run.
  let securityReason = '';
  socket.addEventListener('close', (event) => {
    clearTimeout(waiting);
    const words = event.reason || securityReason || CLOSE_WORDS[event.code] || `closed (code ${event.code})`;
    const retry = RETRYABLE.has(event.code) ? ' — this is temporary: reload the page to try again' : '';
    setStatus('disconnected', `Disconnected: ${words}${retry}`, { code: event.code, reason: event.reason });
  });

  const rfb = new RFB(screen, socket, { shared: true });
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.viewOnly = viewOnly;
  rfb.background = getComputedStyle(screen).backgroundColor; // match the page, not noVNC's grey

  rfb.addEventListener('connect', () => {
    clearTimeout(waiting);
    setStatus('connected', 'Connected');
    rfb.focus();
  });
  rfb.addEventListener('securityfailure', (event) => {
    // The VNC server refused us; its reason beats the gateway's generic close.
    securityReason = event.detail.reason || 'VNC authentication failed';
  });
  rfb.addEventListener('credentialsrequired', () => {
    setStatus('connecting', 'Password required…');
    passwordDialog.hidden = false;
    password.value = '';
    password.focus();
  });
  rfb.addEventListener('clipboard', (event) => {
    clipboard.value = event.detail.text;
    // Best effort: browsers allow this only with focus and permission; the text box is the fallback.
    navigator.clipboard?.writeText(event.detail.text).catch(() => {});
  });

  passwordDialog.addEventListener('submit', (event) => {
    event.preventDefault();
    passwordDialog.hidden = true;
    rfb.sendCredentials({ password: password.value });
    password.value = '';
  });
  ctrlAltDel.addEventListener('click', () => {
    rfb.sendCtrlAltDel();
    rfb.focus();
  });
  pasteSend.addEventListener('click', () => {
    rfb.clipboardPasteFrom(pasteText.value);
    rfb.focus();
  });
}
