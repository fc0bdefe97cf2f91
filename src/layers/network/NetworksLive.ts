/**
 * The `Networks` service on the state database: network records (`networks`) and each member's
 * address (`network_members`, unique per network). Addresses are allocated lowest-free, persist across
 * stop and start, and are released when the member leaves (its workspace is deleted).
 */
import { SqlClient } from "@effect/sql"
import { DateTime, Effect, Layer, Schema } from "effect"
import { Conflict, InvalidInput, NotFound, ResourceExhausted } from "../../domain/Errors.ts"
import { networkNameProblem } from "../../domain/NetworkName.ts"
import { Network, Networks, type NetworksShape } from "../../services/Networks.ts"
import { databaseFileOf, storeFailure } from "../state/StoreFailure.ts"
import {
  autoSubnet,
  formatSubnet,
  gatewayOf,
  lowestFree,
  overlaps,
  parseSubnet,
  slirpSubnet,
  type Subnet
} from "./Addressing.ts"

export { networkNameProblem, reservedNetworkNames } from "../../domain/NetworkName.ts"

const NetworkRecord = Schema.parseJson(Schema.Struct({ subnet: Schema.String, gateway: Schema.String }))

interface NetworkRow {
  readonly name: string
  readonly record: string
  readonly created_at: string
}

interface MemberRow {
  readonly network: string
  readonly workspace: string
  readonly ip: string
}

const notFound = (name: string) =>
  new NotFound({
    message: `network ${name} not found`,
    remediation: `create it: microagent network create ${name}`
  })

export const make = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const storeError = storeFailure({
    prefix: "state store",
    remediation: "check the state directory; `microagent state check` reports on the database",
    database: databaseFileOf(sql)
  })

  const toNetwork = (row: NetworkRow, members: ReadonlyArray<MemberRow>) =>
    Effect.gen(function*() {
      const record = yield* Schema.decodeUnknown(NetworkRecord)(row.record).pipe(Effect.mapError(storeError))
      return new Network({
        name: row.name,
        subnet: record.subnet,
        gateway: record.gateway,
        members: members.filter((m) => m.network === row.name).map((m) => ({
          workspace: m.workspace,
          ip: m.ip
        })),
        createdAt: DateTime.unsafeMake(row.created_at)
      })
    })

  const list = Effect.gen(function*() {
    const rows = yield* sql<NetworkRow>`SELECT name, record, created_at FROM networks ORDER BY name`
    const members = yield* sql<
      MemberRow
    >`SELECT network, workspace, ip FROM network_members ORDER BY workspace`
    return yield* Effect.forEach(rows, (row) => toNetwork(row, members))
  }).pipe(Effect.catchTag("SqlError", (e) => Effect.fail(storeError(e))))

  const inspect = (name: string) =>
    Effect.gen(function*() {
      const [row] = yield* sql<NetworkRow>`SELECT name, record, created_at FROM networks WHERE name = ${name}`
      if (row === undefined) return yield* notFound(name)
      const members = yield* sql<MemberRow>`SELECT network, workspace, ip FROM network_members
        WHERE network = ${name} ORDER BY workspace`
      return yield* toNetwork(row, members)
    }).pipe(Effect.catchTag("SqlError", (e) => Effect.fail(storeError(e))))

  const create = (name: string, subnetText?: string) =>
    Effect.gen(function*() {
      const problem = networkNameProblem(name)
      if (problem !== undefined) {
        return yield* new InvalidInput({
          message: `invalid network name: ${problem}`,
          remediation: "pick another name"
        })
      }
      for (;;) {
        const existing = yield* list
        if (existing.some((n) => n.name === name)) {
          return yield* new Conflict({
            message: `network ${name} already exists`,
            remediation: `pick another name, or remove it first: microagent network rm ${name}`
          })
        }
        const taken = existing.map((n) => parseSubnet(n.subnet)).filter((s): s is Subnet =>
          typeof s !== "string"
        )
        let subnet: Subnet
        if (subnetText === undefined) {
          const free = autoSubnet([...taken, slirpSubnet])
          if (free === undefined) {
            return yield* new ResourceExhausted({
              message: "every /24 of 10.89.0.0/16 is taken by a network",
              remediation: "remove unused networks, or give --subnet"
            })
          }
          subnet = free
        } else {
          const parsed = parseSubnet(subnetText)
          if (typeof parsed === "string") {
            return yield* new InvalidInput({
              message: `invalid --subnet: ${parsed}`,
              remediation: "give a private IPv4 network such as 10.90.0.0/24"
            })
          }
          if (overlaps(parsed, slirpSubnet)) {
            return yield* new InvalidInput({
              message: `--subnet ${subnetText} overlaps 10.0.2.0/24, the subnet of user networking`,
              remediation: "pick another subnet, e.g. 10.90.0.0/24"
            })
          }
          const clash = existing.find((n) => {
            const other = parseSubnet(n.subnet)
            return typeof other !== "string" && overlaps(other, parsed)
          })
          if (clash !== undefined) {
            return yield* new Conflict({
              message: `--subnet ${subnetText} overlaps network ${clash.name} (${clash.subnet})`,
              remediation: "pick a subnet no other network uses"
            })
          }
          subnet = parsed
        }
        const at = DateTime.formatIso(yield* DateTime.now)
        const record = yield* Schema.encode(NetworkRecord)({
          subnet: formatSubnet(subnet),
          gateway: gatewayOf(subnet)
        })
          .pipe(Effect.mapError(storeError))
        const inserted = yield* sql<{ name: string }>`INSERT INTO networks (name, record, created_at)
          VALUES (${name}, ${record}, ${at}) ON CONFLICT (name) DO NOTHING RETURNING name`
        if (inserted.length === 0) {
          return yield* new Conflict({
            message: `network ${name} already exists`,
            remediation: "pick another name"
          })
        }
        // Two creates may have picked overlapping subnets at once: the one inserted first keeps its subnet.
        const rows = yield* sql<
          { name: string; record: string; id: number }
        >`SELECT name, record, rowid AS id FROM networks`
        const mine = rows.find((r) => r.name === name)!
        const earlier = yield* Effect.forEach(
          rows.filter((r) => r.id < mine.id),
          (r) => Schema.decodeUnknown(NetworkRecord)(r.record).pipe(Effect.mapError(storeError))
        )
        if (
          !earlier.some((r) => {
            const other = parseSubnet(r.subnet)
            return typeof other !== "string" && overlaps(other, subnet)
          })
        ) {
          return yield* inspect(name)
        }
        yield* sql`DELETE FROM networks WHERE name = ${name}`
        if (subnetText !== undefined) {
          return yield* new Conflict({
            message: `--subnet ${subnetText} overlaps a network created at the same moment`,
            remediation: "pick a subnet no other network uses"
          })
        }
      }
    }).pipe(Effect.catchTag("SqlError", (e) => Effect.fail(storeError(e))))

  const remove = (name: string) =>
    Effect.gen(function*() {
      const network = yield* inspect(name)
      if (network.members.length > 0) {
        return yield* new Conflict({
          message: `network ${name} has members: ${network.members.map((m) => m.workspace).join(", ")}`,
          remediation:
            `delete them, or pass --force to detach the stopped ones: microagent network rm --force ${name}`
        })
      }
      yield* sql`DELETE FROM networks WHERE name = ${name}`
    }).pipe(Effect.catchTag("SqlError", (e) => Effect.fail(storeError(e))))

  const join = (name: string, workspace: string) =>
    Effect.gen(function*() {
      const network = yield* inspect(name)
      const subnet = parseSubnet(network.subnet)
      if (typeof subnet === "string") return yield* storeError(`network ${name}: ${subnet}`)
      const answer = (ip: string) => ({ ip, gateway: network.gateway, prefix: subnet.prefix })
      // A concurrent join may take the address chosen here: the unique index says so, and the next pass picks another.
      for (;;) {
        const members = yield* sql<
          MemberRow
        >`SELECT network, workspace, ip FROM network_members WHERE network = ${name}`
        const mine = members.find((m) => m.workspace === workspace)
        if (mine !== undefined) return answer(mine.ip)
        const ip = lowestFree(subnet, [network.gateway, ...members.map((m) => m.ip)])
        if (ip === undefined) {
          return yield* new ResourceExhausted({
            message: `network ${name} (${network.subnet}) has no free address`,
            remediation: "remove members, or create a network with a larger --subnet"
          })
        }
        const inserted = yield* sql<{ ip: string }>`INSERT INTO network_members (network, workspace, ip)
          VALUES (${name}, ${workspace}, ${ip}) ON CONFLICT DO NOTHING RETURNING ip`
        if (inserted.length === 1) return answer(ip)
      }
    }).pipe(Effect.catchTag("SqlError", (e) => Effect.fail(storeError(e))))

  const leave = (name: string, workspace: string) =>
    sql`DELETE FROM network_members WHERE network = ${name} AND workspace = ${workspace}`.pipe(
      Effect.asVoid,
      Effect.mapError(storeError)
    )

  return Networks.of({ create, list, inspect, remove, join, leave } satisfies NetworksShape)
})

/** Needs the state database (`SqlClient`). */
export const layer = Layer.effect(Networks, make)
