// Errors that end tsvisor with one line on stderr and a chosen exit code, never a stack trace.
export class UsageError extends Error {
  override name = 'UsageError';
}

export class UserError extends Error {
  override name = 'UserError';
}

export const ExitCode = {
  OK: 0,
  ERROR: 1,
  USAGE: 2,
  GUEST_PANIC: 3,
  GUEST_FAULT: 4,
} as const;
