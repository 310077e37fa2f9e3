// A child that reports nothing for too long is presumed stuck: it is ended, and the
// caller can tell that from a child that ended by itself.
import type { ChildProcess } from 'node:child_process';

export interface SilenceGuard {
  /** The child made progress: the silence starts again. */
  arm(): void;
  /** Whether the guard ended the child. */
  readonly stalled: boolean;
  /** Ends the child now, as if the silence had run out (another sign said it is stuck). */
  expire(): void;
  stop(): void;
}

/** Sends SIGTERM to `child` once `ms` pass without a call to arm(); armed from the start. */
export function killOnSilence(child: ChildProcess, ms: number): SilenceGuard {
  let timer: NodeJS.Timeout | undefined;
  const guard = {
    stalled: false,
    arm: () => {
      clearTimeout(timer);
      timer = setTimeout(() => guard.expire(), ms);
    },
    expire: () => {
      clearTimeout(timer);
      if (guard.stalled) return;
      guard.stalled = true;
      child.kill('SIGTERM');
    },
    stop: () => clearTimeout(timer),
  };
  guard.arm();
  return guard;
}
