/** Bounded concurrency, shared by the eval run's judge requests and the folder audit's scan workers. */

/**
 * Runs `fn` over `items` with at most `limit` in flight. The first failure stops new work; once the calls in
 * flight have settled, it is rethrown.
 */
export async function inParallel<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: { error: unknown } | undefined;
  const lane = async () => {
    while (next < items.length && !failure) {
      try {
        await fn(items[next++]);
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, lane));
  if (failure) throw failure.error;
}
