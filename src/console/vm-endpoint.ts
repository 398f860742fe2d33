// Where the gateway dials a session's VM: a stored target becomes a checked endpoint, an IP
// literal inside TARGET_ALLOWED_CIDRS or a real socket path inside TARGET_ALLOWED_SOCKET_DIRS.
// The console path, the readiness probe and the control plane all check through here.
import type { Config } from '../config.js';
import { isSocketTarget, type Target } from '../db/sessions.js';
import { resolveSocketTarget } from './socket-target.js';
import { resolveTarget, type CidrList, type Resolver } from './target.js';

/** Shaped as `net.connect` takes it: a checked address and port, or a checked socket path. */
export type VmEndpoint = { host: string; port: number } | { path: string };

export interface TargetRules {
  cidrs: CidrList;
  socketDirs: readonly string[];
  resolve?: Resolver;
}

export const rulesOf = (config: Pick<Config, 'targetAllowedCidrs' | 'targetAllowedSocketDirs'>, resolve?: Resolver): TargetRules => ({
  cidrs: config.targetAllowedCidrs,
  socketDirs: config.targetAllowedSocketDirs,
  ...(resolve !== undefined ? { resolve } : {}),
});

/** Resolves and checks `target`; throws TARGET_FORBIDDEN, TARGET_UNRESOLVABLE or DIAL_FAILED. */
export async function checkTarget(target: Target, rules: TargetRules): Promise<VmEndpoint> {
  if (isSocketTarget(target)) return { path: await resolveSocketTarget(target.socket, rules.socketDirs) };
  return { host: await resolveTarget(target.host, rules.cidrs, rules.resolve), port: target.port };
}
