// Group commit for ticket consumption: every presentation that arrives while the event loop runs
// one turn (and while the previous batch is still in the database) shares one statement, so a burst
// of 100 connects costs a handful of round trips instead of 100 — the difference between a single
// embedded connection queueing them and keeping up. Exactly-once is still the primary key's job.
import type { Kysely } from 'kysely';
import type { Database } from './schema.js';
import { consumeTickets, type Consumption, type Presentation } from './tickets.js';

/** Presentations per statement; a larger burst goes out as several statements back to back. */
const MAX_BATCH = 512;

interface Waiter {
  presentation: Presentation;
  resolve(result: Consumption): void;
  reject(error: unknown): void;
}

const LOST: Consumption = { won: false, session: undefined };

export class TicketBatcher {
  private pending: Waiter[] = [];
  private scheduled = false;
  private inFlight = false;

  constructor(private readonly db: Kysely<Database>) {}

  /** Consumes one ticket (with its session read) in the next batch. */
  consume(presentation: Presentation): Promise<Consumption> {
    return new Promise((resolve, reject) => {
      this.pending.push({ presentation, resolve, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.scheduled || this.inFlight || this.pending.length === 0) return;
    this.scheduled = true;
    // setImmediate runs after this turn's I/O callbacks: every upgrade parsed in it joins the batch.
    setImmediate(() => {
      this.scheduled = false;
      void this.flush();
    });
  }

  private async flush(): Promise<void> {
    const waiters = this.pending.splice(0, MAX_BATCH);
    this.inFlight = true;
    try {
      // The same jti twice in one batch: the first presentation is the one that can win.
      const first = new Map<string, Waiter>();
      const losers: Waiter[] = [];
      for (const w of waiters) (first.has(w.presentation.jti) ? losers : (first.set(w.presentation.jti, w), [])).push(w);
      for (const w of losers) w.resolve(LOST);
      const batch = [...first.values()];
      try {
        const results = await consumeTickets(this.db, batch.map((w) => w.presentation));
        batch.forEach((w, i) => w.resolve(results[i]!));
      } catch (error) {
        for (const w of batch) w.reject(error);
      }
    } finally {
      this.inFlight = false;
      this.schedule();
    }
  }
}
