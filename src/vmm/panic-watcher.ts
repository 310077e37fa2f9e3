// Watches the guest's console for Linux's panic messages. "Kernel panic - not
// syncing" marks the guest as panicking, so a reset that follows (panic=N) is
// reported as the panic it is; "---[ end Kernel panic", printed once panic() has
// given up and the CPU is about to spin forever, ends the VM. Together they catch
// panics that happen before a pvpanic driver is loaded, or on kernels without one.
const START = 'Kernel panic - not syncing';
const END = '---[ end Kernel panic';
const MAX_LINE = 512;

export class PanicWatcher {
  private line = '';
  /** True once the guest has started to panic. */
  panicking = false;
  private fired = false;

  constructor(private readonly onPanicEnd: () => void) {}

  feed(bytes: Uint8Array): void {
    if (this.fired) return;
    for (const b of bytes) {
      if (b === 0x0a) {
        this.line = '';
        continue;
      }
      if (this.line.length >= MAX_LINE) continue;
      this.line += String.fromCharCode(b);
      if (!this.panicking && this.line.endsWith(START)) this.panicking = true;
      if (this.panicking && this.line.endsWith(END)) {
        this.fired = true;
        this.onPanicEnd();
        return;
      }
    }
  }
}
