// The i8042 keyboard controller, as far as a guest without a keyboard uses it:
// self-tests, the command byte, the output port, and the CPU reset line (pulsed
// by command 0xFE, or by clearing bit 0 of the output port) that Linux's
// `reboot` drives. There is no keyboard behind it, so it raises no interrupts.
import type { BusDevice } from '../bus.js';

export const I8042_DATA_PORT = 0x60;
export const I8042_COMMAND_PORT = 0x64;

const STATUS_OBF = 0x01;
const STATUS_SYS = 0x04;
const STATUS_CMD = 0x08;

const CMD_READ_CTR = 0x20;
const CMD_WRITE_CTR = 0x60;
const CMD_DISABLE_AUX = 0xa7;
const CMD_ENABLE_AUX = 0xa8;
const CMD_TEST_AUX = 0xa9;
const CMD_SELF_TEST = 0xaa;
const CMD_TEST_KBD = 0xab;
const CMD_DISABLE_KBD = 0xad;
const CMD_ENABLE_KBD = 0xae;
const CMD_READ_OUTPORT = 0xd0;
const CMD_WRITE_OUTPORT = 0xd1;
const CMD_WRITE_KBD_OUTBUF = 0xd2;
const CMD_WRITE_AUX_OUTBUF = 0xd3;
const CMD_WRITE_AUX = 0xd4;
const CMD_PULSE_FIRST = 0xf0;

const OUTPORT_RESET_HIGH = 0x01; // bit 0 low holds the CPU in reset
const KBD_ACK = 0xfa;
const KBD_RESET = 0xff;
const KBD_SELF_TEST_OK = 0xaa;

export class I8042 implements BusDevice {
  readonly name = 'i8042';
  private ctr = 0x45;
  private outport = 0x03;
  private status = STATUS_SYS;
  private output: number[] = [];
  private awaiting: number | undefined;

  constructor(private readonly onReset: () => void) {}

  private push(b: number): void {
    this.output.push(b);
  }

  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    if (offset === I8042_COMMAND_PORT - I8042_DATA_PORT) {
      data[0] = this.status | (this.output.length ? STATUS_OBF : 0);
    } else if (offset === 0) {
      data[0] = this.output.shift() ?? 0;
    }
  }

  write(offset: number, data: Uint8Array): void {
    const v = data[0]!;
    if (offset === I8042_COMMAND_PORT - I8042_DATA_PORT) this.command(v);
    else if (offset === 0) this.data(v);
  }

  private command(cmd: number): void {
    this.status |= STATUS_CMD;
    this.awaiting = undefined;
    switch (cmd) {
      case CMD_READ_CTR:
        this.push(this.ctr);
        break;
      case CMD_WRITE_CTR:
      case CMD_WRITE_OUTPORT:
      case CMD_WRITE_KBD_OUTBUF:
      case CMD_WRITE_AUX_OUTBUF:
      case CMD_WRITE_AUX:
        this.awaiting = cmd;
        break;
      case CMD_SELF_TEST:
        this.push(0x55);
        break;
      case CMD_TEST_KBD:
      case CMD_TEST_AUX:
        this.push(0x00);
        break;
      case CMD_READ_OUTPORT:
        this.push(this.outport);
        break;
      case CMD_DISABLE_KBD:
        this.ctr |= 0x10;
        break;
      case CMD_ENABLE_KBD:
        this.ctr &= ~0x10;
        break;
      case CMD_DISABLE_AUX:
        this.ctr |= 0x20;
        break;
      case CMD_ENABLE_AUX:
        this.ctr &= ~0x20;
        break;
      default:
        // 0xF0-0xFF pulse output-port lines low for the bits that are clear; line 0 is CPU reset.
        if (cmd >= CMD_PULSE_FIRST && !(cmd & OUTPORT_RESET_HIGH)) this.onReset();
        break;
    }
  }

  private data(v: number): void {
    this.status &= ~STATUS_CMD;
    const pending = this.awaiting;
    this.awaiting = undefined;
    switch (pending) {
      case CMD_WRITE_CTR:
        this.ctr = v;
        break;
      case CMD_WRITE_OUTPORT:
        this.outport = v;
        if (!(v & OUTPORT_RESET_HIGH)) this.onReset();
        break;
      case CMD_WRITE_KBD_OUTBUF:
      case CMD_WRITE_AUX_OUTBUF:
        this.push(v);
        break;
      case CMD_WRITE_AUX:
        break; // no mouse: the byte goes nowhere
      default:
        // A byte for the keyboard itself: acknowledge it, and answer a reset with a passed self-test.
        this.push(KBD_ACK);
        if (v === KBD_RESET) this.push(KBD_SELF_TEST_OK);
        break;
    }
  }
}
