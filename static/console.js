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

// Closes that mean "not now" rather than "no": draining, busy or not ready, VM unreachable.
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

const reconnectButton = $('reconnect');

/**
 * The embedding frontend, for fresh tickets: the parent window and the origins it may have
 * (FRAME_ANCESTORS / ALLOWED_ORIGINS, from console/config.json). Messages go to each listed origin
 * by name, never '*': the browser delivers one only if the parent really has that origin.
 */
const parent = window.parent !== window ? window.parent : undefined;
let parentOrigins = [];
const pageConfig = loadPageConfig();

async function loadPageConfig() {
  try {
    const res = await fetch(new URL('console/config.json', location.href), { cache: 'no-store', credentials: 'omit' });
    if (res.ok) parentOrigins = ((await res.json()).parentOrigins || []).filter((o) => typeof o === 'string' && o !== '*');
  } catch {
    // No config, no reconnect through the parent: the Reconnect button still asks again.
  }
}

// Fullscreen works whether or not a console connects.
fullscreen.addEventListener('click', () => {
  if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
  else document.documentElement.requestFullscreen().catch(() => {});
});
document.addEventListener('fullscreenchange', () => {
  fullscreen.setAttribute('aria-pressed', String(Boolean(document.fullscreenElement)));
});

let rfb; // the current noVNC connection, for the toolbar
let viewOnly = false;

ctrlAltDel.addEventListener('click', () => {
  rfb?.sendCtrlAltDel();
  rfb?.focus();
});
pasteSend.addEventListener('click', () => {
  rfb?.clipboardPasteFrom(pasteText.value);
  rfb?.focus();
});
passwordDialog.addEventListener('submit', (event) => {
  event.preventDefault();
  passwordDialog.hidden = true;
  rfb?.sendCredentials({ password: password.value });
  password.value = '';
});

const ticket = takeTicket();
if (!ticket) {
  setStatus('disconnected', 'Disconnected: no ticket in the console link', { reason: 'no ticket in the console link' });
} else {
  connect(ticket);
}

function connect(ticket) {
  viewOnly = isViewOnly(ticket);
  $('view-only').hidden = !viewOnly;
  reconnectButton.hidden = true;
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
    const close = { code: event.code, reason: event.reason };
    if (RETRYABLE.has(event.code) && parent !== undefined) return void reconnect(words, close);
    // Opened on its own, the page has nobody to ask for a fresh ticket.
    const retry = RETRYABLE.has(event.code) ? ' — this is temporary: reload the page to try again' : '';
    setStatus('disconnected', `Disconnected: ${words}${retry}`, close);
  });

  rfb = new RFB(screen, socket, { shared: true });
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.viewOnly = viewOnly;
  rfb.background = getComputedStyle(screen).backgroundColor; // match the page, not noVNC's grey

  rfb.addEventListener('connect', () => {
    clearTimeout(waiting);
    attempts = 0;
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
}

// Reconnecting after a retryable close: ask the parent for a fresh ticket (a ticket is one-time),
// wait a growing delay, connect again. Closes in a row without reaching "Connected" count as
// attempts; after the last one, or when the parent does not answer, the page stays disconnected
// with a Reconnect button that asks again.
const ANSWER_TIMEOUT_MS = 5000;
const BACKOFF_MS = [500, 1000, 2000, 4000, 8000];
let attempts = 0;
let lastClose = { words: '', close: { reason: '' } };

async function reconnect(words, close) {
  lastClose = { words, close };
  if (attempts >= BACKOFF_MS.length) return showDisconnected();
  setStatus('reconnecting', 'Reconnecting…', close);
  const delay = new Promise((resolve) => setTimeout(resolve, BACKOFF_MS[attempts]));
  attempts++;
  const fresh = await askParentForTicket(words, close.code);
  await delay;
  if (fresh === undefined) return showDisconnected();
  connect(fresh);
}

function showDisconnected() {
  setStatus('disconnected', `Disconnected: ${lastClose.words}`, lastClose.close);
  reconnectButton.hidden = parent === undefined;
}

reconnectButton.addEventListener('click', () => {
  attempts = 0;
  void reconnect(lastClose.words, lastClose.close);
});

/** Posts the ticket request to the parent; resolves with a ticket from an allowed origin, or undefined. */
async function askParentForTicket(reason, code) {
  await pageConfig;
  if (parentOrigins.length === 0) await loadPageConfig();
  if (parentOrigins.length === 0) return undefined;
  return new Promise((resolve) => {
    const done = (value) => {
      clearTimeout(timer);
      window.removeEventListener('message', onMessage);
      resolve(value);
    };
    const onMessage = (event) => {
      if (event.source !== parent || !parentOrigins.includes(event.origin)) return;
      const data = event.data;
      if (data?.type === 'console-gateway:ticket' && typeof data.ticket === 'string' && data.ticket !== '') done(data.ticket);
    };
    const timer = setTimeout(() => done(undefined), ANSWER_TIMEOUT_MS);
    window.addEventListener('message', onMessage);
    for (const origin of parentOrigins) parent.postMessage({ type: 'console-gateway:ticket-request', reason, code }, origin);
  });
}
