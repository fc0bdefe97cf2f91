/**
 * The host's end of a forwarded guest port (the model channel, a broker endpoint): connects to the
 * VMM's unix socket for that virtio-serial port and turns each connection the guest opens on its
 * loopback port into a Duplex stream, framed as ModelChannel.ts says. A channel that closes (the VMM
 * restarting its chardev, a malformed frame) is connected again while the VMM lives; the connections
 * open at that moment end.
 */
import * as NodeNet from "node:net"
import { Duplex } from "node:stream"
import { dataFrames, encodeFrame, FrameReader, FrameType } from "./ModelChannel.ts"

export interface ChannelServerOptions {
  /** The VMM's socket for the port. */
  readonly socket: string
  /** False once the VM is gone: the server stops connecting. */
  readonly vmmAlive: () => boolean
  /** A connection the guest opened; its bytes flow once something reads the stream. */
  readonly onConnection: (stream: Duplex) => void
  /** The channel was reset because the guest sent something that is not a frame. */
  readonly onMalformed?: () => void
}

/** A connection of the guest, as a socket-like Duplex (what an HTTP server asks of one is a no-op). */
class GuestStream extends Duplex {
  constructor(
    readonly id: number,
    private readonly send: (frame: Buffer) => void,
    private readonly forget: (id: number) => boolean
  ) {
    super()
  }
  setTimeout() {
    return this
  }
  setNoDelay() {
    return this
  }
  setKeepAlive() {
    return this
  }
  override _read() {}
  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void) {
    for (const frame of dataFrames(this.id, chunk)) this.send(frame)
    callback()
  }
  override _final(callback: (error?: Error | null) => void) {
    this.send(encodeFrame(FrameType.eof, this.id))
    callback()
  }
  override _destroy(error: Error | null, callback: (error?: Error | null) => void) {
    if (this.forget(this.id)) this.send(encodeFrame(FrameType.close, this.id))
    callback(error)
  }
}

/** Serves the channel until `stop` (or until the VMM is gone). */
export const serveChannel = (options: ChannelServerOptions): { readonly stop: () => void } => {
  let socket: NodeNet.Socket | undefined
  let stopped = false
  const streams = new Map<number, GuestStream>()
  const send = (frame: Buffer) => void socket?.write(frame)
  const forget = (id: number) => streams.delete(id)

  const onFrame = (type: FrameType, id: number, payload: Buffer) => {
    if (type === FrameType.open) {
      const guest = new GuestStream(id, send, forget)
      streams.set(id, guest)
      guest.on("error", () => guest.destroy())
      return options.onConnection(guest)
    }
    const guest = streams.get(id)
    if (guest === undefined) return
    if (type === FrameType.data) guest.push(payload)
    else if (type === FrameType.eof) guest.push(null)
    else {
      streams.delete(id)
      guest.destroy()
    }
  }

  const connect = () => {
    if (stopped || !options.vmmAlive()) return
    const reader = new FrameReader()
    const s = NodeNet.connect(options.socket)
    socket = s
    s.on("data", (bytes: Buffer) => {
      try {
        for (const frame of reader.push(bytes)) onFrame(frame.type, frame.id, frame.payload)
      } catch {
        options.onMalformed?.()
        s.destroy()
      }
    })
    s.on("error", () => {})
    s.on("close", () => {
      const open = [...streams.values()]
      streams.clear()
      for (const guest of open) guest.destroy()
      setTimeout(connect, 200)
    })
  }
  connect()
  return {
    stop: () => {
      stopped = true
      socket?.destroy()
    }
  }
}
