// The DHCP server of user-mode networking (RFC 2131, the subset a guest's client
// uses): DISCOVER gets an OFFER, REQUEST an ACK (or a NAK for an address this
// server did not give that client), with mask, router, DNS server and lease time.
// One address per client MAC, handed out upwards from dhcpstart.
import { formatMac, readU16, readU32, writeU16, writeU32 } from '../packet.js';
import { netmask, type UserNetConfig } from './config.js';

export const DHCP_SERVER_PORT = 67;
export const DHCP_CLIENT_PORT = 68;
const BOOTP_FIXED = 236;
const MAGIC = 0x63825363;
const MAX_LEASES = 64;
const LEASE_SECONDS = 86400;

const Msg = { DISCOVER: 1, OFFER: 2, REQUEST: 3, DECLINE: 4, ACK: 5, NAK: 6, RELEASE: 7, INFORM: 8 } as const;
const Opt = { PAD: 0, MASK: 1, ROUTER: 3, DNS: 6, REQUESTED_IP: 50, LEASE: 51, MSG_TYPE: 53, SERVER_ID: 54, END: 255 } as const;

export class DhcpServer {
  private readonly leases = new Map<string, number>();
  counters = { offers: 0, acks: 0, naks: 0, malformed: 0 };

  constructor(private readonly config: UserNetConfig) {}

  /** The address leased to `mac`, if any. */
  leaseOf(mac: Uint8Array): number | undefined {
    return this.leases.get(formatMac(mac));
  }

  /** A client's BOOTP message in; the reply's BOOTP payload out, or undefined (nothing to say). */
  handle(msg: Uint8Array): Uint8Array | undefined {
    if (msg.length < BOOTP_FIXED + 4 || msg[0] !== 1 || msg[1] !== 1 || msg[2] !== 6 || readU32(msg, BOOTP_FIXED) !== MAGIC) {
      this.counters.malformed++;
      return undefined;
    }
    const options = parseOptions(msg.subarray(BOOTP_FIXED + 4));
    const type = options.get(Opt.MSG_TYPE)?.[0];
    const mac = msg.slice(28, 34);
    const requested = options.get(Opt.REQUESTED_IP);
    const wanted = requested?.length === 4 ? readU32(requested, 0) : readU32(msg, 12); // option 50, else ciaddr
    switch (type) {
      case Msg.DISCOVER: {
        const addr = this.allocate(mac);
        if (addr === undefined) return undefined;
        this.counters.offers++;
        return this.reply(msg, Msg.OFFER, addr);
      }
      case Msg.REQUEST: {
        const addr = this.allocate(mac);
        if (addr === undefined || (wanted !== 0 && wanted !== addr)) {
          this.counters.naks++;
          return this.reply(msg, Msg.NAK, 0);
        }
        this.counters.acks++;
        return this.reply(msg, Msg.ACK, addr);
      }
      case Msg.RELEASE:
        this.leases.delete(formatMac(mac));
        return undefined;
      default:
        return undefined;
    }
  }

  private allocate(mac: Uint8Array): number | undefined {
    const key = formatMac(mac);
    const had = this.leases.get(key);
    if (had !== undefined) return had;
    const taken = new Set(this.leases.values());
    for (let i = 0; i < MAX_LEASES; i++) {
      const addr = (this.config.dhcpStart + i) >>> 0;
      if (taken.has(addr) || addr === this.config.host || addr === this.config.dns) continue;
      if ((addr & ~netmask(this.config.prefixLength)) >>> 0 === ~netmask(this.config.prefixLength) >>> 0) break; // broadcast
      this.leases.set(key, addr);
      return addr;
    }
    return undefined;
  }

  private reply(request: Uint8Array, type: number, addr: number): Uint8Array {
    const out = new Uint8Array(BOOTP_FIXED + 4 + 64);
    out[0] = 2; // BOOTREPLY
    out[1] = 1;
    out[2] = 6;
    out.set(request.subarray(4, 8), 4); // xid
    writeU16(out, 10, readU16(request, 10)); // flags
    writeU32(out, 16, addr); // yiaddr
    writeU32(out, 20, this.config.host); // siaddr
    out.set(request.subarray(28, 44), 28); // chaddr
    writeU32(out, BOOTP_FIXED, MAGIC);
    let at = BOOTP_FIXED + 4;
    const put = (code: number, ...values: number[]): void => {
      out[at++] = code;
      out[at++] = values.length * 4;
      for (const v of values) {
        writeU32(out, at, v);
        at += 4;
      }
    };
    out[at++] = Opt.MSG_TYPE;
    out[at++] = 1;
    out[at++] = type;
    put(Opt.SERVER_ID, this.config.host);
    if (type !== Msg.NAK) {
      put(Opt.LEASE, LEASE_SECONDS);
      put(Opt.MASK, netmask(this.config.prefixLength));
      put(Opt.ROUTER, this.config.host);
      put(Opt.DNS, this.config.dns);
    }
    out[at++] = Opt.END;
    return out.subarray(0, Math.max(at, 300)); // BOOTP's minimum message
  }
}

function parseOptions(bytes: Uint8Array): Map<number, Uint8Array> {
  const out = new Map<number, Uint8Array>();
  let at = 0;
  while (at < bytes.length) {
    const code = bytes[at]!;
    if (code === Opt.END) break;
    if (code === Opt.PAD) {
      at++;
      continue;
    }
    const len = bytes[at + 1];
    if (len === undefined || at + 2 + len > bytes.length) break;
    out.set(code, bytes.subarray(at + 2, at + 2 + len));
    at += 2 + len;
  }
  return out;
}
