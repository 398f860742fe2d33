// The library surface for Node frontends and embedders.
export { mintTicket, type MintOptions } from './console/ticket.js';
export { loadConfig, type Config } from './config.js';
export { startServe, type Running } from './app.js';
export { startGateway, type Gateway } from './console/server.js';
export { startDemoVncServer, type DemoVncServer } from './demo/demo-vnc.js';
export { GatewayError, CATALOGUE, type ErrorCode } from './errors.js';
