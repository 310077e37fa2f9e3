// The addresses of a user-mode network, QEMU's defaults unless the user set them:
// guest network 10.0.2.0/24, the host (gateway) at .2, the DNS server at .3, DHCP
// leases from .15.
import { formatIpv4 } from '../packet.js';

export interface HostForward {
  /** Host address to listen on; empty: every address. */
  hostAddress: string;
  hostPort: number;
  /** Guest address; absent: the first DHCP address. */
  guestAddress?: number;
  guestPort: number;
}

export interface UserNetConfig {
  network: number;
  prefixLength: number;
  host: number;
  dns: number;
  dhcpStart: number;
  /** Where DNS queries to `dns` go: the host's resolver (from /etc/resolv.conf) unless set. */
  resolver?: { address: string; port: number };
  hostForwards: HostForward[];
  /** Host resources the guest may make tsvisor hold; keys not set take DEFAULT_USER_LIMITS. */
  limits?: Partial<UserNetLimits>;
}

/** The `--netdev user` keys that bound what one guest can make tsvisor hold. */
export interface UserNetLimits {
  /** Open TCP connections, guest-initiated and hostfwd together (one host socket each). */
  maxTcp: number;
  /** UDP flows, one host socket per guest source port. */
  maxUdp: number;
  /** Seconds an established TCP connection may pass without a segment or host data. */
  tcpIdle: number;
  /** Seconds a UDP flow may pass without a datagram either way. */
  udpIdle: number;
  /** Bytes tsvisor buffers per TCP connection in each direction. */
  tcpBuffer: number;
}

// 384 sockets stay well inside the usual 1024-fd soft limit; the TCP idle time is
// RFC 5382's floor for a NAT's established-connection timeout (2 h 4 min), so a
// guest's 2-hour keepalives keep a connection; UDP's is conntrack's 60 s.
export const DEFAULT_USER_LIMITS: UserNetLimits = {
  maxTcp: 256,
  maxUdp: 128,
  tcpIdle: 7440,
  udpIdle: 60,
  tcpBuffer: 256 * 1024,
};

const ip = (a: number, b: number, c: number, d: number): number => ((a << 24) | (b << 16) | (c << 8) | d) >>> 0;

export const DEFAULT_USER_NET: UserNetConfig = {
  network: ip(10, 0, 2, 0),
  prefixLength: 24,
  host: ip(10, 0, 2, 2),
  dns: ip(10, 0, 2, 3),
  dhcpStart: ip(10, 0, 2, 15),
  hostForwards: [],
};

export function netmask(prefixLength: number): number {
  return prefixLength === 0 ? 0 : (0xffffffff << (32 - prefixLength)) >>> 0;
}

export function inNetwork(config: UserNetConfig, addr: number): boolean {
  const mask = netmask(config.prefixLength);
  return (addr & mask) >>> 0 === config.network;
}

/** Why the addresses cannot work together, or undefined. */
export function checkUserNet(config: UserNetConfig): string | undefined {
  const mask = netmask(config.prefixLength);
  if ((config.network & ~mask) >>> 0 !== 0) return `net ${formatIpv4(config.network)}/${config.prefixLength} has host bits set`;
  for (const [name, addr] of [
    ['host', config.host],
    ['dns', config.dns],
    ['dhcpstart', config.dhcpStart],
  ] as const) {
    if (!inNetwork(config, addr)) return `${name} ${formatIpv4(addr)} is outside ${formatIpv4(config.network)}/${config.prefixLength}`;
  }
  if (config.host === config.dns) return 'host and dns must differ';
  return undefined;
}
