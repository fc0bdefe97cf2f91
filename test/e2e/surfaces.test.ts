/**
 * The MCP server and the RPC API on real QEMU microVMs: the same suites as the fast tier, booting the
 * built-in busybox image (no registry needed) with the Debian cloud kernel.
 */
import { describeMcpServer } from "../mcp/suite.ts"
import { describeRpcServer } from "../rpc/suite.ts"

const target = { backend: "qemu", image: "microagent.local/busybox:latest" } as const

describeMcpServer(target)
describeRpcServer(target)
