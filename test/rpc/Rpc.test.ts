/**
 * The RPC API on the fast tier (the fake backend, unless MICROAGENT_TEST_BACKEND says otherwise).
 */
import { targetFromEnvironment } from "../mcp/mcpClient.ts"
import { describeRpcServer } from "./suite.ts"

describeRpcServer(targetFromEnvironment())
