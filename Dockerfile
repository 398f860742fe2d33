# syntax=docker/dockerfile:1
# Build stage: compile TypeScript with the dev dependencies.
FROM node:26-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: "prepare" compiles, and the sources are not copied yet.
RUN npm ci --ignore-scripts
COPY tsconfig.json ./
COPY src ./src
COPY static ./static
COPY scripts ./scripts
# The gateway, then the console page bundled with noVNC (dist/page, hashed and precompressed).
RUN npm run build

# Runtime stage: production dependencies, compiled code, the page and the hook examples.
FROM node:26-slim
ENV NODE_ENV=production \
    PORT=8080 \
    DATA_DIR=/data
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts && npm cache clean --force
COPY --from=build /app/dist ./dist
COPY static ./static
COPY examples ./examples
# The embedded database lives under DATA_DIR; set DATABASE_URL to use PostgreSQL instead.
RUN mkdir -p /data && chown node:node /data
USER node
VOLUME ["/data"]
# 8080: consoles, control API, /healthz /readyz /metrics (serve); 9464: OPS_PORT of the gate and
# reconcile sidecars.
EXPOSE 8080 9464
# Liveness only; load balancers should use /readyz (database reachable and not draining).
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 8080) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# SIGTERM drains: /readyz turns 503, live consoles get DRAIN_TIMEOUT_SECONDS, then 1001.
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "dist/cli.js"]
CMD ["serve"]
