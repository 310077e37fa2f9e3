// Watches the guest's console for the text Linux prints when panic() has finished
// and the CPU is about to spin forever ("---[ end Kernel panic - not syncing: ...").
// It ends the VM on panics that happen before a pvpanic driver can be loaded, and
// on kernels without one, instead of leaving a VM that never exits.
const MARKER = '---[ end Kernel panic';
const MARKER_LAST = MARKER.charCodeAt(MARKER.length - 1);
const MAX_LINE = 512;

export class PanicWatcher {
  private line = '';
  private fired = false;

  constructor(private readonly onPanic: () => void) {}

  feed(bytes: Uint8Array): void {
    if (this.fired) return;
    for (const b of bytes) {
      if (b === 0x0a) {
        this.line = '';
        continue;
      }
      if (this.line.length < MAX_LINE) this.line += String.fromCharCode(b);
      if (b === MARKER_LAST && this.line.endsWith(MARKER)) {
        this.fired = true;
        this.onPanic();
        return;
      }
    }
  }
}
