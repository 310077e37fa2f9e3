// The front-end side of vhost-user: tsvisor hands a device's rings to a back-end
// process (qemu-storage-daemon, DPDK, tsvisor's own daemons) over a Unix socket.
// The calls are the vhost ioctls' (VhostRings), so a device drives the kernel's
// vhost and a vhost-user back-end the same way; each waits for its reply (or, with
// REPLY_ACK, its acknowledgement) for at most REPLY_TIMEOUT_MS: a back-end that
// stops answering fails the device instead of freezing the VMM.
import { closeFd } from '../../host/libc.js';
import { sendWithFds, unixConnect } from '../../host/unix-socket.js';
import type { VhostRegion, VhostRings, VringAddresses } from '../rings.js';
import { closeAll, MessageReader } from './connection.js';
import { bit } from '../../virtio/device.js';
import {
  configPayload,
  decodeConfig,
  decodeU64,
  decodeVringState,
  encode,
  F_PROTOCOL_FEATURES,
  FLAG_NEED_REPLY,
  FLAG_REPLY,
  memTablePayload,
  ProtocolError,
  ProtocolFeature,
  Request,
  requestName,
  u64Payload,
  VRING_NOFD,
  vringAddrPayload,
  vringStatePayload,
  type Message,
} from './protocol.js';

export const REPLY_TIMEOUT_MS = 10_000;

/** Protocol features tsvisor's front-end uses when the back-end offers them. */
export const FRONTEND_PROTOCOL_FEATURES = [ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIG].reduce((a, f) => a | bit(f), 0n);

export class VhostUserClient implements VhostRings {
  private readonly reader: MessageReader;
  /** The back-end's virtio features (with F_PROTOCOL_FEATURES), and the protocol features both sides use. */
  readonly features: bigint;
  /** Acknowledged only from SET_PROTOCOL_FEATURES on. */
  protocolFeatures = 0n;
  private closed = false;

  /** Connects to the back-end at `path` and negotiates protocol features; throws ProtocolError or SysError. */
  static connect(path: string): VhostUserClient {
    return new VhostUserClient(unixConnect(path));
  }

  constructor(readonly fd: number) {
    this.reader = new MessageReader(fd);
    try {
      this.features = this.getU64(Request.GET_FEATURES);
      if (this.features & bit(F_PROTOCOL_FEATURES)) {
        const protocol = this.getU64(Request.GET_PROTOCOL_FEATURES) & FRONTEND_PROTOCOL_FEATURES;
        this.send(Request.SET_PROTOCOL_FEATURES, u64Payload(protocol));
        this.protocolFeatures = protocol;
      }
      this.send(Request.SET_OWNER);
    } catch (e) {
      this.close();
      throw e;
    }
  }

  has(feature: number): boolean {
    return (this.protocolFeatures & bit(feature)) !== 0n;
  }

  /** Sends a request that has no reply of its own; waits for the acknowledgement when REPLY_ACK is in use. */
  private send(request: number, payload?: Uint8Array, fds?: readonly number[]): void {
    const ack = this.has(ProtocolFeature.REPLY_ACK);
    sendWithFds(this.fd, encode(request, ack ? FLAG_NEED_REPLY : 0, payload), fds);
    if (!ack) return;
    const status = decodeU64(this.replyTo(request));
    if (status !== 0n) throw new ProtocolError(`the back-end refused ${requestName(request)} (status ${status})`);
  }

  /** Sends a request that the back-end answers, and returns the answer. */
  private call(request: number, payload?: Uint8Array): Message {
    sendWithFds(this.fd, encode(request, 0, payload));
    return this.replyTo(request);
  }

  private replyTo(request: number): Message {
    const m = this.reader.readOne(REPLY_TIMEOUT_MS, requestName(request));
    closeAll(m.fds);
    if (m.request !== request || !(m.flags & FLAG_REPLY)) throw new ProtocolError(`${requestName(m.request)} came back for ${requestName(request)}`);
    return m;
  }

  private getU64(request: number): bigint {
    return decodeU64(this.call(request));
  }

  queueNum(): number {
    return this.has(ProtocolFeature.MQ) ? Number(this.getU64(Request.GET_QUEUE_NUM)) : 1;
  }

  setFeatures(features: bigint): void {
    // The back-end is told it may use protocol features whenever it offered them.
    this.send(Request.SET_FEATURES, u64Payload(features | (this.features & bit(F_PROTOCOL_FEATURES))));
  }

  setMemTable(regions: readonly VhostRegion[]): void {
    const table = regions.map((r) => {
      if (r.fd === undefined) throw new Error('vhost-user needs guest memory backed by a file');
      return { guestAddress: BigInt(r.guestAddress), size: BigInt(r.size), userAddress: r.hostAddress, mmapOffset: BigInt(r.fileOffset) };
    });
    this.send(
      Request.SET_MEM_TABLE,
      memTablePayload(table),
      regions.map((r) => r.fd!),
    );
  }

  setVringNum(index: number, size: number): void {
    this.send(Request.SET_VRING_NUM, vringStatePayload({ index, num: size }));
  }

  setVringBase(index: number, nextAvail: number): void {
    this.send(Request.SET_VRING_BASE, vringStatePayload({ index, num: nextAvail }));
  }

  setVringAddr(index: number, a: VringAddresses): void {
    this.send(Request.SET_VRING_ADDR, vringAddrPayload({ index, flags: 0, desc: a.desc, used: a.used, avail: a.avail, log: 0n }));
  }

  setVringKick(index: number, fd: number): void {
    this.sendVringFd(Request.SET_VRING_KICK, index, fd);
  }

  setVringCall(index: number, fd: number): void {
    this.sendVringFd(Request.SET_VRING_CALL, index, fd);
  }

  setVringErr(index: number, fd: number): void {
    this.sendVringFd(Request.SET_VRING_ERR, index, fd);
  }

  private sendVringFd(request: number, index: number, fd: number): void {
    this.send(request, u64Payload(BigInt(index) | (fd < 0 ? VRING_NOFD : 0n)), fd < 0 ? [] : [fd]);
  }

  /** With protocol features, a ring runs only once enabled. */
  setVringEnable(index: number, enable: boolean): void {
    if (this.features & bit(F_PROTOCOL_FEATURES)) this.send(Request.SET_VRING_ENABLE, vringStatePayload({ index, num: enable ? 1 : 0 }));
  }

  /** Stops the ring (the back-end finishes what it took) and returns its next available index. */
  getVringBase(index: number): number {
    const s = decodeVringState(this.call(Request.GET_VRING_BASE, vringStatePayload({ index, num: 0 })));
    if (s.index !== index || s.num > 0xffff) throw new ProtocolError(`GET_VRING_BASE: ring ${s.index} at ${s.num} came back for ring ${index}`);
    return s.num;
  }

  /** `size` bytes of the device's configuration space from `offset` (needs the CONFIG protocol feature). */
  getConfig(offset: number, size: number): Uint8Array {
    if (!this.has(ProtocolFeature.CONFIG)) throw new ProtocolError('the back-end does not offer its configuration space (protocol feature CONFIG)');
    const c = decodeConfig(this.call(Request.GET_CONFIG, configPayload({ offset, flags: 0, data: new Uint8Array(size) })));
    if (c.offset !== offset || c.data.length !== size)
      throw new ProtocolError(`GET_CONFIG: ${c.data.length} bytes at ${c.offset} came back for ${size} at ${offset}`);
    return c.data;
  }

  /**
   * Between requests the back-end has nothing to say: true when the socket shows
   * it hung up or sent something unasked. (A poller may report the socket readable
   * for a reply that a request already took: then nothing is waiting.)
   */
  broken(): boolean {
    try {
      const r = this.reader.read();
      if (r === 'closed') return true;
      for (const m of r) closeAll(m.fds);
      return r.length > 0;
    } catch {
      return true;
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    closeFd(this.fd);
  }
}
