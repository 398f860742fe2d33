// The operator commands (`session …`, `ticket`, `ports …`, `diagnose`, `reconcile --once`) as one
// table of requests, run the same way by the CLI against its own database connection and by a
// running `serve` for a CLI that reaches it through the admin socket: same JSON, same exit codes.
import type { RuntimeHook } from '../fleet/runtime-hook.js';
import { passFailed, type PassSummary } from '../fleet/reconciler.js';
import { GatewayError } from '../errors.js';
import { commitTargetOp, createSessionOp, mintTicketOp, stopSessionOp, type ControlDeps } from './control.js';
import { diagnose } from './diagnose.js';
import { allocatePortOp, poolOp, releasePortOp } from './port-ops.js';

export interface OperatorRequest {
  command: OperatorCommand;
  /** The session id, for the commands that take one. */
  id?: string;
  /** The request body, as the control API takes it. */
  body?: unknown;
  dryRun?: boolean;
}

export interface OperatorResult {
  output: unknown;
  exitCode: number;
}

export interface OperatorDeps {
  control: ControlDeps;
  hook?: RuntimeHook;
  /** The base of console URLs in minted tickets. */
  publicUrl: string;
  /** One reconciler pass (skipped when one is running). */
  reconcile(dryRun: boolean): Promise<PassSummary>;
}

const ok = (output: unknown): OperatorResult => ({ output, exitCode: 0 });

const COMMANDS = {
  'session-create': async (d: OperatorDeps, r: OperatorRequest) => ok(await createSessionOp(d.control, r.body)),
  'session-target': async (d: OperatorDeps, r: OperatorRequest) => ok(await commitTargetOp(d.control, idOf(r), r.body)),
  'session-stop': async (d: OperatorDeps, r: OperatorRequest) => ok(await stopSessionOp(d.control, idOf(r))),
  ticket: async (d: OperatorDeps, r: OperatorRequest) => ok(await mintTicketOp(d.control, idOf(r), r.body, d.publicUrl)),
  diagnose: async (d: OperatorDeps, r: OperatorRequest) => {
    const { healthy, report } = await diagnose({ db: d.control.db, config: d.control.config, ...(d.hook ? { hook: d.hook } : {}) }, idOf(r));
    return { output: report, exitCode: healthy ? 0 : 1 };
  },
  'ports-status': async (d: OperatorDeps) => ok(await poolOp(d.control, false)),
  'ports-list': async (d: OperatorDeps) => ok(await poolOp(d.control, true)),
  'ports-allocate': async (d: OperatorDeps, r: OperatorRequest) => ok((await allocatePortOp(d.control, idOf(r))).lease),
  'ports-release': async (d: OperatorDeps, r: OperatorRequest) => ok(await releasePortOp(d.control, idOf(r))),
  reconcile: async (d: OperatorDeps, r: OperatorRequest) => {
    const summary = await d.reconcile(r.dryRun === true);
    return { output: summary, exitCode: passFailed(summary) ? 1 : 0 };
  },
} satisfies Record<string, (deps: OperatorDeps, request: OperatorRequest) => Promise<OperatorResult>>;

export type OperatorCommand = keyof typeof COMMANDS;

function idOf(request: OperatorRequest): string {
  if (typeof request.id !== 'string') throw new GatewayError('BAD_REQUEST', 'this command takes one session ID');
  return request.id;
}

export function isOperatorCommand(name: unknown): name is OperatorCommand {
  return typeof name === 'string' && Object.hasOwn(COMMANDS, name);
}

/** Runs one operator command; errors are GatewayErrors the caller reports (exit 1, or 3 for PORTS_EXHAUSTED). */
export function runOperatorCommand(deps: OperatorDeps, request: OperatorRequest): Promise<OperatorResult> {
  if (!isOperatorCommand(request.command)) throw new GatewayError('BAD_REQUEST', `unknown operator command: ${String(request.command)}`);
  return COMMANDS[request.command](deps, request);
}
