// Waits for something another thread or process does: polls `done` every 5 ms,
// `tries` times, then fails naming what it waited for.
export async function until(what: string, done: () => boolean, tries = 400): Promise<void> {
  for (let i = 0; i < tries; i++) {
    if (done()) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`timed out waiting until ${what}`);
}
