// Ethernet frames from fuzz bytes: ARP, DHCP, UDP, TCP (with an MSS option of
// any value) and ICMP, built well-formed with the test suite's builders and then
// corrupted in a few header bytes, or raw bytes. Addresses lean towards the ones
// user-mode networking answers (10.0.2.x, broadcast) and the cards' MACs.
import { arpRequest, ip, ipv4Frame, tcpFrame, udpFrame } from '../../test/support/net-frames.js';
import type { ByteReader } from './bytes.js';

export const GATEWAY = ip('10.0.2.2');
export const DNS = ip('10.0.2.3');
export const GUEST = ip('10.0.2.15');
const ADDRESSES = [GATEWAY, DNS, GUEST, ip('10.0.2.255'), 0xffffffff, 0, ip('224.0.0.1'), ip('127.0.0.1'), ip('8.8.8.8')];
const PORTS = [53, 67, 68, 7, 80, 0, 65535];
const MACS = [
  [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
  [0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
  [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01],
  [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02],
];

export const address = (r: ByteReader): number => (r.u8() < 200 ? r.pick(ADDRESSES) : r.u32());
export const port = (r: ByteReader): number => (r.u8() < 160 ? r.pick(PORTS) : r.u16());

/** A DHCP client message: BOOTP header, the magic cookie, then options (type, requested address, anything). */
function dhcp(r: ByteReader): Uint8Array {
  const m = new Uint8Array(240 + 16);
  m[0] = 1;
  m.set(MACS[0]!, 28);
  m.set([0x63, 0x82, 0x53, 0x63], 236);
  m.set([53, 1, r.u8() % 9, 50, 4, 10, 0, 2, r.u8()], 240);
  m.set(r.bytes(6), 249);
  return m;
}

export function frame(r: ByteReader): Uint8Array {
  let f: Uint8Array;
  switch (r.u8() % 7) {
    case 0:
      f = arpRequest(address(r), address(r));
      break;
    case 1:
      f = udpFrame(address(r), port(r), address(r), port(r), r.bytes(r.u8()));
      break;
    case 2:
      f = udpFrame(0, 68, 0xffffffff, 67, dhcp(r));
      break;
    case 3:
    case 4: {
      const flags = r.u8() < 128 ? r.pick([0x02, 0x10, 0x18, 0x11, 0x04, 0x12]) : r.u8();
      f = tcpFrame(address(r), address(r), {
        srcPort: port(r),
        dstPort: port(r),
        seq: r.u32(),
        ack: r.u32(),
        flags,
        window: r.u16(),
        mss: r.bool() ? r.u16() : undefined,
        payload: r.bytes(r.u8()),
      });
      break;
    }
    case 5:
      f = ipv4Frame(1, address(r), address(r), Uint8Array.from([r.bool() ? 8 : r.u8(), 0, 0, 0, ...r.bytes(r.u8() % 64)]));
      break;
    default:
      return r.rest(2048);
  }
  f.set(r.pick(MACS), 0);
  // A few corrupted header bytes: lengths, IHL, flags, data offsets.
  for (let n = r.u8() < 160 ? 0 : 1 + (r.u8() % 3); n > 0; n--) f[r.below(Math.min(f.length, 64))] = r.u8();
  return f;
}
