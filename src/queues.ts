/**
 * Named queues of async tasks: a task runs once every task queued before it under the same name
 * has settled (fulfilled or rejected), so work on one room, or one device's requests, never
 * interleaves. Internal to the library.
 *
 * @module
 * @internal
 */

/** @internal */
export class SerialQueues {
  readonly #tails = new Map<string, Promise<void>>();

  /** Runs `task` after every task queued before it under `queue`; resolves or rejects as it does. */
  run<T>(queue: string, task: () => Promise<T>): Promise<T> {
    const run = (this.#tails.get(queue) ?? Promise.resolve()).then(task);
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.#tails.set(queue, tail);
    void tail.then(() => {
      if (this.#tails.get(queue) === tail) this.#tails.delete(queue);
    });
    return run;
  }

  /** Waits until every queued task has settled, including tasks queued while waiting. */
  async idle(): Promise<void> {
    while (this.#tails.size > 0) await Promise.allSettled([...this.#tails.values()]);
  }
}
