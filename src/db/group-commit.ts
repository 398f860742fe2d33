// Group commit for the connect path: every call that arrives while the event loop runs one turn
// (and while the previous batch is still in the database) shares one statement, so a burst of 100
// connects costs a handful of round trips instead of 100 — the difference between a single
// embedded connection queueing them and keeping up. Used for ticket consumption (which registers
// the console too) and for removing rows of the live-console registry, which nothing waits for:
// those linger a moment so that the ends of many consoles share one statement even at low rates.

/** Items per statement; a larger burst goes out as several statements back to back. */
const MAX_BATCH = 512;

interface Waiter<In, Out> {
  item: In;
  resolve(result: Out): void;
  reject(error: unknown): void;
}

export class GroupCommit<In, Out> {
  private pending: Waiter<In, Out>[] = [];
  private scheduled = false;
  private inFlight = false;

  /**
   * `statement` answers one result per item, in the batch's order, or fails the whole batch.
   * `lingerMs` > 0 holds a batch open that long after its first item instead of one turn.
   */
  constructor(
    private readonly statement: (batch: readonly In[]) => Promise<readonly Out[]>,
    private readonly lingerMs = 0,
  ) {}

  /** Runs `item` in the next batch. */
  submit(item: In): Promise<Out> {
    return new Promise((resolve, reject) => {
      this.pending.push({ item, resolve, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.scheduled || this.inFlight || this.pending.length === 0) return;
    this.scheduled = true;
    const go = () => {
      this.scheduled = false;
      void this.flush();
    };
    // setImmediate runs after this turn's I/O callbacks: every call made in it joins the batch.
    if (this.lingerMs > 0) setTimeout(go, this.lingerMs);
    else setImmediate(go);
  }

  private async flush(): Promise<void> {
    const batch = this.pending.splice(0, MAX_BATCH);
    this.inFlight = true;
    try {
      const results = await this.statement(batch.map((w) => w.item));
      batch.forEach((w, i) => w.resolve(results[i]!));
    } catch (error) {
      for (const w of batch) w.reject(error);
    } finally {
      this.inFlight = false;
      this.schedule();
    }
  }
}
