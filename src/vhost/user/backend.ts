// The back-end side of one vhost-user connection: a front-end (QEMU, DPDK's
// virtio-user, tsvisor) drives one tsvisor virtio device through messages. The
// device is the same class the VMM puts behind its PCI transport, behind the same
// per-queue contract: the memory table becomes the device's MemoryTable (the
// front-end's fds, mapped by the device's worker), each ring that has its size,
// addresses and kick fd and is enabled becomes a started queue, GET_VRING_BASE
// stops it and answers with its state.
//
// The front-end is untrusted. Every message is checked before it changes
// anything; one that fails gets an error reply when the front-end asked for one
// and otherwise ends the connection. A ring the device cannot run (the data plane
// failed) is reported through the ring's error fd. What goes wrong here never
// leaves this connection: the daemon serves its other clients.
import fs from 'node:fs';
import { closeFd, eventfd, eventfdSignal, setNonBlocking } from '../../host/libc.js';
import { GuestMemory, type MemoryTable } from '../../memory/guest-memory.js';
import { SplitQueue, type QueueState } from '../../virtio/queue.js';
import type { EventLoop } from '../../vmm/event-loop.js';
import {
  bit,
  describeError,
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_F_RING_INDIRECT_DESC,
  VIRTIO_F_VERSION_1,
  VirtioId,
  type DeviceHost,
  type VirtioDevice,
} from '../../virtio/device.js';
import { closeAll, MessageReader, sendMessage } from './connection.js';
import {
  ANSWERED,
  configPayload,
  decodeConfig,
  decodeMemRegion,
  decodeMemTable,
  decodeU64,
  decodeVringAddr,
  decodeVringFd,
  decodeVringState,
  F_PROTOCOL_FEATURES,
  FLAG_NEED_REPLY,
  FLAG_REPLY,
  MAX_CONFIG_SIZE,
  ProtocolError,
  ProtocolFeature,
  Request,
  requestName,
  u64Payload,
  vringStatePayload,
  type MemRegion,
  type Message,
  type VringAddr,
} from './protocol.js';

/** Regions ADD_MEM_REG may build up to (GET_MAX_MEM_SLOTS). */
export const MAX_MEM_SLOTS = 32;
const PAGE = 4096n;

export const BACKEND_PROTOCOL_FEATURES = [
  ProtocolFeature.MQ,
  ProtocolFeature.REPLY_ACK,
  ProtocolFeature.CONFIG,
  ProtocolFeature.RESET_DEVICE,
  ProtocolFeature.CONFIGURE_MEM_SLOTS,
].reduce((a, f) => a | bit(f), 0n);

/** One region the front-end shared, with the fd it came with (this session owns it). */
interface Region extends MemRegion {
  fd: number;
}

interface Ring {
  num?: number;
  addr?: VringAddr;
  /** The available index the ring (re)starts from. */
  base: number;
  kickFd?: number;
  callFd?: number;
  errFd?: number;
  enabled: boolean;
  running: boolean;
}

export interface SessionCounters {
  messages: number;
  protocolErrors: number;
  deviceFailures: number;
}

export class BackendSession {
  private readonly reader: MessageReader;
  private readonly rings: Ring[];
  private readonly offered: bigint;
  /** A net front-end builds the config space itself (QEMU 7.2 warns about CONFIG from a net back-end). */
  private readonly protocolOffered: bigint;
  private acked = 0n;
  private protocolAcked = 0n;
  private protocolSet = false;
  private regions: Region[] = [];
  /** The main thread's own mapping of the regions (reads the used index, checks ring placement). */
  private memory: GuestMemory | undefined;
  private activated = false;
  private token: number | undefined;
  private pending: Message[] = [];
  private pumping = false;
  /** The message being handled: end() lets it finish before it takes the session apart. */
  private inHand: Promise<void> | undefined;
  private ended = false;
  /** Where a ring with no call fd signals (nobody listens). */
  private sinkFd: number | undefined;
  readonly counters: SessionCounters = { messages: 0, protocolErrors: 0, deviceFailures: 0 };

  constructor(
    readonly fd: number,
    private readonly device: VirtioDevice,
    private readonly loop: EventLoop,
    /** One line about this connection (what went wrong, or that it ended). */
    private readonly log: (line: string) => void,
    private readonly onEnd: (session: BackendSession) => void,
  ) {
    this.reader = new MessageReader(fd);
    this.rings = device.queueSizes.map(() => ({ base: 0, enabled: false, running: false }));
    this.offered = device.features | bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_RING_INDIRECT_DESC) | bit(VIRTIO_F_RING_EVENT_IDX) | bit(F_PROTOCOL_FEATURES);
    this.protocolOffered = device.type === VirtioId.NET ? BACKEND_PROTOCOL_FEATURES & ~bit(ProtocolFeature.CONFIG) : BACKEND_PROTOCOL_FEATURES;
    this.listen();
  }

  private listen(): void {
    this.token = this.loop.add(this.fd, () => this.onReadable());
  }

  private onReadable(): void {
    let got;
    try {
      got = this.reader.read();
    } catch (e) {
      this.counters.protocolErrors++;
      return void this.end(`bad message: ${describeError(e)}`);
    }
    if (got === 'closed') return void this.end('the front-end hung up');
    this.pending.push(...got);
    void this.pump();
  }

  /** Handles messages one at a time, in order; the socket is not read while one is being handled. */
  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    if (this.token !== undefined) this.loop.remove(this.token);
    this.token = undefined;
    for (let m = this.pending.shift(); m && !this.ended; m = this.pending.shift()) {
      this.counters.messages++;
      try {
        await (this.inHand = this.handle(m));
        this.ack(m, true);
      } catch (e) {
        this.counters.protocolErrors++;
        const why = `${requestName(m.request)}: ${describeError(e)}`;
        if (this.ackable(m)) {
          this.log(`refused ${why}`);
          this.ack(m, false);
        } else await this.end(why);
      } finally {
        closeAll(m.fds);
      }
    }
    this.pumping = false;
    if (!this.ended) this.listen();
  }

  private ackable(m: Message): boolean {
    return (m.flags & FLAG_NEED_REPLY) !== 0 && (this.protocolAcked & bit(ProtocolFeature.REPLY_ACK)) !== 0n && !ANSWERED.has(m.request);
  }

  private ack(m: Message, ok: boolean): void {
    if (this.ackable(m) && !this.ended) this.reply(m.request, u64Payload(ok ? 0n : 1n));
  }

  private reply(request: number, payload: Uint8Array): void {
    try {
      sendMessage(this.fd, request, FLAG_REPLY, payload);
    } catch (e) {
      // The front-end is gone (EPIPE, ECONNRESET): the connection ends, the message in hand finishes first.
      void this.end(`replying to ${requestName(request)}: ${describeError(e)}`);
    }
  }

  /** The fds `m` brought, taken (the session closes them when it is done with them). */
  private takeFds(m: Message, n: number): number[] {
    if (m.fds.length !== n) throw new ProtocolError(`${m.fds.length} fds came, expected ${n}`);
    return m.fds.splice(0);
  }

  private ring(index: number): Ring {
    const r = this.rings[index];
    if (!r) throw new ProtocolError(`ring ${index}: the device has ${this.rings.length}`);
    return r;
  }

  /** Ring `index`, which must not be running: its size, addresses and base are fixed while it runs. */
  private idleRing(index: number): Ring {
    const r = this.ring(index);
    if (r.running) throw new ProtocolError(`ring ${index} runs`);
    return r;
  }

  private async handle(m: Message): Promise<void> {
    switch (m.request) {
      case Request.GET_FEATURES:
        return this.reply(m.request, u64Payload(this.offered));
      case Request.SET_FEATURES: {
        const f = decodeU64(m);
        if (f & ~this.offered) throw new ProtocolError(`features 0x${f.toString(16)} were not offered (0x${this.offered.toString(16)})`);
        if (this.rings.some((r) => r.running)) throw new ProtocolError('features changed while rings run');
        this.acked = f;
        this.activated = false;
        return;
      }
      case Request.GET_PROTOCOL_FEATURES:
        return this.reply(m.request, u64Payload(this.protocolOffered));
      case Request.SET_PROTOCOL_FEATURES: {
        const f = decodeU64(m);
        if (f & ~this.protocolOffered) throw new ProtocolError(`protocol features 0x${f.toString(16)} were not offered`);
        this.protocolAcked = f;
        this.protocolSet = true;
        return;
      }
      case Request.SET_OWNER:
        return;
      case Request.RESET_OWNER:
      case Request.RESET_DEVICE:
        return this.resetDevice();
      case Request.GET_QUEUE_NUM:
        return this.reply(m.request, u64Payload(BigInt(this.rings.length)));
      case Request.GET_MAX_MEM_SLOTS:
        return this.reply(m.request, u64Payload(BigInt(MAX_MEM_SLOTS)));
      case Request.SET_MEM_TABLE: {
        const table = decodeMemTable(m);
        const fds = this.takeFds(m, table.length);
        return this.replaceMemory(table.map((r, i) => ({ ...r, fd: fds[i]! })));
      }
      case Request.ADD_MEM_REG: {
        const r = decodeMemRegion(m);
        const [fd] = this.takeFds(m, 1);
        if (this.regions.length >= MAX_MEM_SLOTS) {
          closeFd(fd!);
          throw new ProtocolError(`more than ${MAX_MEM_SLOTS} regions`);
        }
        return this.replaceMemory([...this.regions, { ...r, fd: fd! }], this.regions);
      }
      case Request.REM_MEM_REG: {
        const r = decodeMemRegion(m);
        const gone = this.regions.find((x) => x.guestAddress === r.guestAddress && x.size === r.size && x.userAddress === r.userAddress);
        if (!gone) throw new ProtocolError(`no region at guest 0x${r.guestAddress.toString(16)} of 0x${r.size.toString(16)} bytes`);
        return this.replaceMemory(
          this.regions.filter((x) => x !== gone),
          this.regions.filter((x) => x !== gone),
        );
      }
      case Request.SET_VRING_NUM: {
        const s = decodeVringState(m);
        const r = this.idleRing(s.index);
        const max = this.device.queueSizes[s.index]!;
        if (s.num === 0 || s.num > max || s.num & (s.num - 1)) throw new ProtocolError(`ring ${s.index}: size ${s.num} is not a power of two up to ${max}`);
        r.num = s.num;
        return;
      }
      case Request.SET_VRING_ADDR: {
        const a = decodeVringAddr(m);
        const r = this.idleRing(a.index);
        // Logging dirty pages (VHOST_VRING_F_LOG) is not offered.
        if (a.flags !== 0) throw new ProtocolError(`ring ${a.index}: flags 0x${a.flags.toString(16)}`);
        r.addr = a;
        return this.maybeStart(a.index);
      }
      case Request.SET_VRING_BASE: {
        const s = decodeVringState(m);
        const r = this.idleRing(s.index);
        if (s.num > 0xffff) throw new ProtocolError(`ring ${s.index}: base ${s.num} is not a 16-bit index`);
        r.base = s.num;
        return;
      }
      case Request.GET_VRING_BASE: {
        const s = decodeVringState(m);
        const r = this.ring(s.index);
        await this.stopRing(s.index);
        for (const fd of [r.kickFd, r.callFd]) if (fd !== undefined) closeFd(fd);
        r.kickFd = r.callFd = undefined;
        return this.reply(m.request, vringStatePayload({ index: s.index, num: r.base }));
      }
      case Request.SET_VRING_KICK:
      case Request.SET_VRING_CALL:
      case Request.SET_VRING_ERR: {
        const { index, noFd } = decodeVringFd(m);
        const r = this.ring(index);
        const [fd] = this.takeFds(m, noFd ? 0 : 1);
        // A blocking eventfd written to its limit would block whoever signals it (the daemon's
        // main thread, a device worker); non-blocking, that write fails and only this client's device does.
        if (fd !== undefined) {
          try {
            setNonBlocking(fd);
          } catch (e) {
            closeFd(fd);
            throw e;
          }
        }
        const key = m.request === Request.SET_VRING_KICK ? 'kickFd' : m.request === Request.SET_VRING_CALL ? 'callFd' : 'errFd';
        // A running ring is stopped and started again around the change (QEMU moves the call fd when the guest masks a vector).
        const wasRunning = r.running && key !== 'errFd';
        if (wasRunning) await this.stopRing(index);
        const old = r[key];
        r[key] = fd;
        if (old !== undefined) closeFd(old);
        // Without protocol features a ring is enabled by its kick (the spec's "started").
        if (key === 'kickFd' && !(this.acked & bit(F_PROTOCOL_FEATURES))) r.enabled = true;
        if (wasRunning || key === 'kickFd') return this.maybeStart(index);
        return;
      }
      case Request.SET_VRING_ENABLE: {
        const s = decodeVringState(m);
        const r = this.ring(s.index);
        if (s.num > 1) throw new ProtocolError(`ring ${s.index}: enable ${s.num}`);
        // QEMU 7.2's vhost-user net leaves the bit out of SET_FEATURES, so having set protocol features counts too.
        if (!(this.acked & bit(F_PROTOCOL_FEATURES)) && !this.protocolSet) throw new ProtocolError('SET_VRING_ENABLE without protocol features');
        r.enabled = s.num === 1;
        return r.enabled ? this.maybeStart(s.index) : this.stopRing(s.index);
      }
      case Request.GET_CONFIG: {
        if (!(this.protocolAcked & bit(ProtocolFeature.CONFIG))) throw new ProtocolError('GET_CONFIG without the CONFIG protocol feature');
        const c = decodeConfig(m);
        if (c.offset + c.data.length > MAX_CONFIG_SIZE) throw new ProtocolError(`config bytes ${c.offset}+${c.data.length} past ${MAX_CONFIG_SIZE}`);
        const data = new Uint8Array(c.data.length);
        this.device.readConfig(c.offset, data);
        return this.reply(m.request, configPayload({ offset: c.offset, flags: c.flags, data }));
      }
      case Request.SET_CONFIG: {
        if (!(this.protocolAcked & bit(ProtocolFeature.CONFIG))) throw new ProtocolError('SET_CONFIG without the CONFIG protocol feature');
        const c = decodeConfig(m);
        if (c.offset + c.data.length > this.device.configSize)
          throw new ProtocolError(`config bytes ${c.offset}+${c.data.length} past ${this.device.configSize}`);
        return this.device.writeConfig(c.offset, c.data);
      }
      default:
        throw new ProtocolError('not supported by this back-end');
    }
  }

  /**
   * Takes `next` as the memory table: checks it (sizes, alignment, overlap, each
   * fd's file long enough), stops the running rings, maps it, starts them again.
   * `keep` are regions of the old table that stay (their fds are not closed).
   */
  private async replaceMemory(next: Region[], keep: Region[] = []): Promise<void> {
    let memory: GuestMemory;
    try {
      memory = GuestMemory.map(checkedTable(next));
    } catch (e) {
      closeAll(next.filter((r) => !keep.includes(r) && !this.regions.includes(r)).map((r) => r.fd));
      throw e;
    }
    const running = this.rings.flatMap((r, i) => (r.running ? [i] : []));
    for (const i of running) await this.stopRing(i);
    this.memory?.close();
    closeAll(this.regions.filter((r) => !next.includes(r)).map((r) => r.fd));
    this.regions = next;
    this.memory = memory;
    this.activated = false;
    for (const i of running) this.maybeStart(i);
  }

  /** Starts ring `index` once it has everything a queue needs and is enabled. */
  private maybeStart(index: number): void {
    const r = this.rings[index]!;
    if (r.running || !r.enabled || r.num === undefined || !r.addr || r.kickFd === undefined || !this.memory) return;
    const m = this.memory;
    const toGuest = (uva: bigint, what: string): number => {
      const g = translate(this.regions, uva);
      if (g === undefined) throw new ProtocolError(`ring ${index}: the ${what} at 0x${uva.toString(16)} is outside every region`);
      return g;
    };
    const state: QueueState = {
      size: r.num,
      descTable: toGuest(r.addr.desc, 'descriptor table'),
      availRing: toGuest(r.addr.avail, 'available ring'),
      usedRing: toGuest(r.addr.used, 'used ring'),
      eventIdx: (this.acked & bit(VIRTIO_F_RING_EVENT_IDX)) !== 0n,
      nextAvail: r.base,
      nextUsed: 0,
    };
    // Checked here as the transport checks a ring at DRIVER_OK, so a bad ring is refused in answer to the message that made it.
    SplitQueue.fromState(this.device.queueSizes[index]!, state, m);
    // The device continues the used ring where it stands in memory.
    state.nextUsed = m.readU16(state.usedRing + 2);
    if (!this.activated) {
      this.device.activate(this.acked, this.memory.table(), this.host());
      this.activated = true;
    }
    this.sinkFd ??= eventfd();
    this.device.startQueue({
      index,
      state,
      kickFd: r.kickFd,
      callFd: r.callFd ?? this.sinkFd,
    });
    r.running = true;
  }

  private async stopRing(index: number): Promise<void> {
    const r = this.rings[index]!;
    if (!r.running) return;
    r.running = false;
    const state = await this.device.stopQueue(index);
    if (state) r.base = state.nextAvail;
  }

  private host(): DeviceHost {
    return {
      // The error fds tell the front-end (QEMU 7.2 only logs them); hanging up, as
      // libvhost-user does, leaves no request waiting for a device that is gone.
      fail: (reason) => {
        this.counters.deviceFailures++;
        this.log(`device failed: ${reason}`);
        for (const r of this.rings) if (r.errFd !== undefined) signalQuietly(r.errFd);
        void this.end(`the device failed`);
      },
      // Telling the front-end needs the back-end request channel, which is not offered.
      configChanged: () => {},
    };
  }

  private async resetDevice(): Promise<void> {
    for (let i = 0; i < this.rings.length; i++) await this.stopRing(i);
    this.device.reset();
    for (const r of this.rings) {
      closeAll([r.kickFd, r.callFd, r.errFd].filter((fd) => fd !== undefined));
      Object.assign(r, { num: undefined, addr: undefined, base: 0, kickFd: undefined, callFd: undefined, errFd: undefined, enabled: false });
    }
    this.acked = 0n;
    this.activated = false;
  }

  /** Ends the connection: the rings stop (their requests are finished), the device closes, every fd goes. */
  async end(why: string): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    if (this.token !== undefined) this.loop.remove(this.token);
    this.token = undefined;
    for (const m of this.pending.splice(0)) closeAll(m.fds);
    this.reader.drop();
    await this.inHand?.catch(() => {});
    for (let i = 0; i < this.rings.length; i++) await this.stopRing(i).catch(() => {});
    await this.device.close().catch((e) => this.log(`closing the device: ${describeError(e)}`));
    for (const r of this.rings) closeAll([r.kickFd, r.callFd, r.errFd].filter((fd) => fd !== undefined));
    this.memory?.close();
    closeAll(this.regions.map((r) => r.fd));
    this.regions = [];
    if (this.sinkFd !== undefined) closeFd(this.sinkFd);
    closeFd(this.fd);
    this.log(`disconnected: ${why}`);
    this.onEnd(this);
  }
}

/** Signals a front-end's error fd; one it made unwritable (a read-only file, say) is its own loss, not the daemon's. */
function signalQuietly(fd: number): void {
  try {
    eventfdSignal(fd);
  } catch {
    // Nothing to tell it through.
  }
}

/** The guest address of front-end address `uva`, through the region holding it. */
function translate(regions: readonly Region[], uva: bigint): number | undefined {
  const r = regions.find((x) => uva >= x.userAddress && uva - x.userAddress < x.size);
  return r ? Number(r.guestAddress + (uva - r.userAddress)) : undefined;
}

/** The regions as a MemoryTable, after the checks mapping them needs (overlap is GuestMemory.map's). */
function checkedTable(regions: readonly Region[]): MemoryTable {
  if (regions.length > MAX_MEM_SLOTS) throw new ProtocolError(`${regions.length} regions`);
  const limit = BigInt(Number.MAX_SAFE_INTEGER);
  for (const r of regions) {
    const where = `region at guest 0x${r.guestAddress.toString(16)}`;
    if (r.size === 0n || r.size % PAGE || r.guestAddress % PAGE || r.mmapOffset % PAGE)
      throw new ProtocolError(`${where}: size, address and offset must be page multiples`);
    if (r.guestAddress + r.size > limit || r.mmapOffset + r.size > limit || r.userAddress + r.size > 1n << 64n) throw new ProtocolError(`${where}: too large`);
    // Touching a mapping past its file's end raises SIGBUS, which would end the daemon.
    let size: number;
    try {
      size = fs.fstatSync(r.fd).size;
    } catch (e) {
      throw new ProtocolError(`${where}: its fd: ${describeError(e)}`);
    }
    if (BigInt(size) < r.mmapOffset + r.size) throw new ProtocolError(`${where}: its file has ${size} bytes, the region needs ${r.mmapOffset + r.size}`);
  }
  for (let i = 0; i < regions.length; i++)
    for (let j = i + 1; j < regions.length; j++) {
      const [a, b] = [regions[i]!, regions[j]!];
      if (a.userAddress < b.userAddress + b.size && b.userAddress < a.userAddress + a.size)
        throw new ProtocolError('regions overlap in the front-end address space');
    }
  return { regions: regions.map((r) => ({ start: Number(r.guestAddress), size: Number(r.size), fd: r.fd, fileOffset: Number(r.mmapOffset) })) };
}
