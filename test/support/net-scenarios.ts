// Network scenarios for boot-scenarios.ts, and the servers they talk to. Both run
// where the guests run (inside the nested KVM host here): an HTTP server on port
// 18080 of every address, a DNS server on 127.0.0.1:15353, and the taps and
// bridges each scenario makes and removes. Nothing leaves that host.
import dgram from 'node:dgram';
import http from 'node:http';
import type { Scenario } from './boot-scenarios.js';

export const HTTP_PORT = 18080;
export const DNS_PORT = 15353;
export const HOSTFWD_PORT = 18022;
/** The address the test DNS server gives for TEST_NAME. */
export const TEST_NAME = 'tsvisor.test';
export const TEST_NAME_ADDRESS = '10.1.2.3';
export const HELLO = 'hello from the host';
export const GUEST_PAGE = 'page served by the guest';
const BLOB_SIZE = 1 << 20;

/** The bytes /blob serves: the same on every run, so tests can know their digest. */
export function blob(): Buffer {
  const b = Buffer.alloc(BLOB_SIZE);
  for (let i = 0; i < b.length; i++) b[i] = (i * 31 + (i >> 8)) & 255;
  return b;
}

/** Retry until the peer answers (for up to `tries` seconds): links come up and guests boot at their own pace. */
const pingUntil = (ip: string, tries = 60) => `for i in $(seq ${tries}); do ping -c 1 -W 1 ${ip} >/dev/null && break; done; ping -c 2 ${ip}`;
const done = (marker: string) => `echo ${marker}-$((1+1))`;

export const NET_SCENARIOS: Scenario[] = [
  {
    // User-mode networking on the default card (virtio-net): DHCP, the gateway, DNS, HTTP out, hostfwd in.
    name: 'net-user',
    stats: true,
    args: ['--netdev', `user,id=n0,resolver=127.0.0.1:${DNS_PORT},hostfwd=tcp:127.0.0.1:${HOSTFWD_PORT}-:8080`, '--device', 'virtio-net-pci,netdev=n0'],
    inputAfter: "Enter 'help'",
    input: [
      `udhcpc -i eth0 -q -n -t 5 && ${done('LEASE')}`,
      'cat /etc/resolv.conf',
      `ping -c 2 -w 10 10.0.2.2 && ${done('PING')}`,
      `nslookup ${TEST_NAME} 10.0.2.3`,
      `wget -q -O - http://10.0.2.2:${HTTP_PORT}/hello && ${done('HTTP')}`,
      `mkdir -p /www && echo "${GUEST_PAGE}" > /www/index.html && httpd -p 8080 -h /www && ${done('SERVING')}`,
      '',
    ].join('\n'),
    hostFetch: { marker: 'SERVING-2', url: `http://127.0.0.1:${HOSTFWD_PORT}/`, then: 'poweroff\n' },
  },
  {
    // Both card models, each on its own tap and subnet, guest to host.
    name: 'net-tap',
    stats: true,
    hostSetup: [
      'ip tuntap add tsvtap0 mode tap && ip tuntap add tsvtap1 mode tap',
      'ip addr add 192.168.70.1/24 dev tsvtap0 && ip addr add 192.168.71.1/24 dev tsvtap1',
      'ip link set tsvtap0 up && ip link set tsvtap1 up',
    ].join(' && '),
    hostTeardown: 'ip link del tsvtap0; ip link del tsvtap1',
    args: [
      '--netdev',
      'tap,id=t0,ifname=tsvtap0,script=no,downscript=no',
      '--device',
      'e1000,netdev=t0',
      '--netdev',
      'tap,id=t1,ifname=tsvtap1,script=no',
      '--device',
      'virtio-net-pci,netdev=t1',
    ],
    inputAfter: "Enter 'help'",
    input: [
      // Interfaces are named in driver-load order; find each card by its driver.
      'for n in /sys/class/net/eth*; do d=$(basename $(readlink $n/device/driver)); [ $d = e1000 ] && E=${n##*/}; [ $d = virtio_net ] && V=${n##*/}; done',
      'echo "e1000=$(cat /sys/class/net/$E/device/vendor):$(cat /sys/class/net/$E/device/device) virtio=$(cat /sys/class/net/$V/address)"',
      'ip addr add 192.168.70.2/24 dev $E && ip link set $E up && ip addr add 192.168.71.2/24 dev $V && ip link set $V up',
      `${pingUntil('192.168.70.1')} && ${done('E1000-PING')}`,
      `${pingUntil('192.168.71.1')} && ${done('VIRTIO-PING')}`,
      `wget -q -O /tmp/a http://192.168.70.1:${HTTP_PORT}/blob && echo "e1000-md5 $(md5sum < /tmp/a)"`,
      `wget -q -O /tmp/b http://192.168.71.1:${HTTP_PORT}/blob && echo "virtio-md5 $(md5sum < /tmp/b)"`,
      'poweroff',
      '',
    ].join('\n'),
  },
  ...(['a', 'b'] as const).map((who): Scenario => ({
    // Two guests on one Linux bridge (host-only: the bridge has no uplink), one card model each.
    name: `net-bridge-${who}`,
    group: 'bridge',
    stats: true,
    hostSetup: 'ip link add tsvbr0 type bridge && ip addr add 192.168.72.1/24 dev tsvbr0 && ip link set tsvbr0 up',
    hostTeardown: 'ip link del tsvbr0',
    args: [
      '--netdev',
      'bridge,id=b,br=tsvbr0',
      '--device',
      `${who === 'a' ? 'e1000' : 'virtio-net-pci'},netdev=b,mac=52:54:00:72:00:0${who === 'a' ? 'a' : 'b'}`,
    ],
    inputAfter: "Enter 'help'",
    input: [
      `ip addr add 192.168.72.${who === 'a' ? 10 : 11}/24 dev eth0 && ip link set eth0 up`,
      `${pingUntil('192.168.72.1')} && ${done('HOST-PING')}`,
      // The other guest may boot minutes later on a loaded host; once it answers, it is
      // pinging this one too, so staying up a while longer is enough for both.
      `${pingUntil(`192.168.72.${who === 'a' ? 11 : 10}`, 300)} && ${done('PEER-PING')}`,
      `wget -q -O - http://192.168.72.1:${HTTP_PORT}/hello && ${done('HTTP')}`,
      'sleep 60; poweroff',
      '',
    ].join('\n'),
  })),
  {
    // vhost-net: two queue pairs served by the host kernel, the control queue by tsvisor.
    name: 'net-vhost',
    cpus: 2,
    stats: true,
    hostSetup: 'ip tuntap add tsvvh0 mode tap multi_queue && ip addr add 192.168.74.1/24 dev tsvvh0 && ip link set tsvvh0 up',
    hostTeardown: 'ip link del tsvvh0',
    args: ['--netdev', 'tap,id=t,ifname=tsvvh0,script=no,queues=2,vhost=on', '--device', 'virtio-net-pci,netdev=t,queues=2'],
    inputAfter: "Enter 'help'",
    input: [
      'echo "queues: $(ls /sys/class/net/eth0/queues | tr "\\n" " ")"',
      'ip addr add 192.168.74.2/24 dev eth0 && ip link set eth0 up',
      `${pingUntil('192.168.74.1')} && ${done('VHOST-PING')}`,
      `taskset 1 wget -q -O /tmp/b http://192.168.74.1:${HTTP_PORT}/blob && echo "vhost-md5 $(md5sum < /tmp/b)"`,
      // Unbinding resets the device (the kernel's rings are stopped and read back); binding starts it afresh.
      'D=$(basename $(readlink /sys/class/net/eth0/device)); echo $D > /sys/bus/virtio/drivers/virtio_net/unbind; echo $D > /sys/bus/virtio/drivers/virtio_net/bind',
      'ip addr add 192.168.74.2/24 dev eth0 && ip link set eth0 up',
      `${pingUntil('192.168.74.1')} && ${done('VHOST-REBOUND')}`,
      `taskset 2 wget -q -O /tmp/b http://192.168.74.1:${HTTP_PORT}/blob && echo "vhost-md5 $(md5sum < /tmp/b)"`,
      'poweroff',
      '',
    ].join('\n'),
  },
  {
    // Two queue pairs on a multi-queue tap, two vCPUs, a flow from each.
    name: 'net-multiqueue',
    cpus: 2,
    stats: true,
    hostSetup: 'ip tuntap add tsvmq0 mode tap multi_queue && ip addr add 192.168.73.1/24 dev tsvmq0 && ip link set tsvmq0 up',
    hostTeardown: 'ip link del tsvmq0',
    args: ['--netdev', 'tap,id=t,ifname=tsvmq0,script=no,queues=2', '--device', 'virtio-net-pci,netdev=t,queues=2'],
    inputAfter: "Enter 'help'",
    input: [
      'echo "queues: $(ls /sys/class/net/eth0/queues | tr "\\n" " ")"',
      'ip addr add 192.168.73.2/24 dev eth0 && ip link set eth0 up',
      `${pingUntil('192.168.73.1')} && ${done('MQ-PING')}`,
      `for cpu in 1 2 1 2; do taskset $cpu wget -q -O /dev/null http://192.168.73.1:${HTTP_PORT}/blob; done; ${done('MQ-DONE')}`,
      'poweroff',
      '',
    ].join('\n'),
  },
];

/** The HTTP and DNS servers the network scenarios use; resolves once both listen. */
export async function startTestServers(): Promise<{ close(): void }> {
  const data = blob();
  const web = http.createServer((req, res) => {
    if (req.url === '/hello') res.end(HELLO + '\n');
    else if (req.url === '/blob') res.end(data);
    else res.writeHead(404).end();
  });
  await new Promise<void>((resolve) => web.listen(HTTP_PORT, '0.0.0.0', resolve));
  const dns = dgram.createSocket('udp4');
  dns.on('message', (query, rinfo) => {
    const reply = answer(query);
    if (reply) dns.send(reply, rinfo.port, rinfo.address);
  });
  await new Promise<void>((resolve) => dns.bind(DNS_PORT, '127.0.0.1', resolve));
  return {
    close() {
      web.close();
      dns.close();
    },
  };
}

/** A DNS reply: an A record for TEST_NAME, an empty NOERROR answer for anything else. */
function answer(query: Buffer): Buffer | undefined {
  if (query.length < 17) return undefined;
  let at = 12;
  const labels: string[] = [];
  while (at < query.length && query[at] !== 0) {
    labels.push(query.toString('latin1', at + 1, at + 1 + query[at]!));
    at += 1 + query[at]!;
  }
  const questionEnd = at + 5;
  if (questionEnd > query.length) return undefined;
  const qtype = query.readUInt16BE(at + 1);
  const hit = labels.join('.').toLowerCase() === TEST_NAME && qtype === 1;
  const header = Buffer.alloc(12);
  query.copy(header, 0, 0, 2);
  header.writeUInt16BE(0x8180, 2);
  header.writeUInt16BE(1, 4);
  header.writeUInt16BE(hit ? 1 : 0, 6);
  const record = Buffer.alloc(16);
  record.writeUInt16BE(0xc00c, 0);
  record.writeUInt16BE(1, 2);
  record.writeUInt16BE(1, 4);
  record.writeUInt32BE(60, 6);
  record.writeUInt16BE(4, 10);
  TEST_NAME_ADDRESS.split('.').forEach((b, i) => (record[12 + i] = Number(b)));
  return Buffer.concat([header, query.subarray(12, questionEnd), hit ? record : Buffer.alloc(0)]);
}
