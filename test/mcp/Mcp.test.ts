/**
 * The MCP server on the fast tier (the fake backend, unless MICROAGENT_TEST_BACKEND says otherwise).
 */
import { targetFromEnvironment } from "./mcpClient.ts"
import { describeMcpServer } from "./suite.ts"

describeMcpServer(targetFromEnvironment())
