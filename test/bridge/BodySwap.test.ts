/**
 * `@secret:NAME` references in request bodies: swapped for the endpoint's values whole and streamed,
 * wherever the chunks are cut, and left as written for a name the endpoint does not hold.
 */
import { Readable } from "node:stream"
import { assert, describe, it } from "vitest"
import { ReferenceSwap, swapBody } from "../../src/bridge/BodySwap.ts"

const held = new Map([["API_KEY", "k3y-välue"], ["B", "b"]])
const body =
  '{"key":"@secret:API_KEY","quoted":"@secret:OTHER","short":"@secret:B.","tail":"@secret:API_KEY"}'
const expected = '{"key":"k3y-välue","quoted":"@secret:OTHER","short":"b.","tail":"k3y-välue"}'

const streamed = async (chunks: ReadonlyArray<Buffer>) => {
  const refs = new Set<string>()
  const out: Array<Buffer> = []
  for await (const chunk of Readable.from(chunks).pipe(new ReferenceSwap(held, refs))) {
    out.push(chunk as Buffer)
  }
  return { bytes: Buffer.concat(out), text: Buffer.concat(out).toString("utf8"), refs: [...refs].sort() }
}

describe("references in a request body", () => {
  it("are swapped in a whole body, only for the names the endpoint holds", () => {
    const refs = new Set<string>()
    assert.strictEqual(swapBody(Buffer.from(body), held, refs).toString("utf8"), expected)
    assert.deepStrictEqual([...refs].sort(), ["API_KEY", "B"])
    const plain = Buffer.from("no reference here")
    assert.strictEqual(swapBody(plain, held, new Set()), plain)
  })

  it("are swapped as the body streams, a reference cut anywhere between two chunks included", async () => {
    const bytes = Buffer.from(body)
    for (let cut = 0; cut <= bytes.length; cut++) {
      const { refs, text } = await streamed([bytes.subarray(0, cut), bytes.subarray(cut)])
      assert.strictEqual(text, expected, `cut at ${cut}`)
      assert.deepStrictEqual(refs, ["API_KEY", "B"])
    }
    // One byte at a time, and binary bytes around them pass unchanged.
    const binary = Buffer.concat([Buffer.from([0, 255, 64]), bytes, Buffer.from([64, 115, 101])])
    const { bytes: out } = await streamed([...binary].map((b) => Buffer.from([b])))
    const want = Buffer.concat([
      Buffer.from([0, 255, 64]),
      Buffer.from(expected),
      Buffer.from([64, 115, 101])
    ])
    assert.isTrue(out.equals(want), `${out.toString("hex")} != ${want.toString("hex")}`)
  })
})
