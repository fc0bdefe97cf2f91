/**
 * The secret values a detached helper (the credential broker, the TLS interceptor) gets from the start
 * that launched it: `{ "NAME": "<base64>" }` on its stdin, which the start then closes. Never in argv
 * or env. `use` runs once they are all in; a helper given something else exits with status 2.
 */
import { Either, Schema } from "effect"

const StdinValues = Schema.Record({ key: Schema.String, value: Schema.String })

export const withStdinValues = (program: string, use: (values: ReadonlyMap<string, string>) => void) => {
  const chunks: Array<Buffer> = []
  process.stdin.on("data", (chunk: Buffer) => chunks.push(chunk))
  process.stdin.on("end", () => {
    const text = Buffer.concat(chunks).toString("utf8")
    chunks.length = 0
    const decoded = Schema.decodeUnknownEither(Schema.parseJson(StdinValues))(text === "" ? "{}" : text)
    if (Either.isLeft(decoded)) {
      process.stderr.write(`${program}: the values on stdin are not valid\n`)
      process.exit(2)
    }
    use(
      new Map(
        Object.entries(decoded.right).map((
          [name, value]
        ) => [name, Buffer.from(value, "base64").toString("utf8")])
      )
    )
  })
}
