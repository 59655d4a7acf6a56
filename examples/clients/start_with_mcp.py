#!/usr/bin/env python3
"""Start a Coder workspace through the operator's MCP server, with the official `mcp` client.

The server (`workspace-start-operator mcp`, Helm value `mcp.enabled=true`) authenticates the
caller by its ServiceAccount token. By default the token must be issued for the audience
`workspace-start-operator`: mount a projected ServiceAccount token with that audience in the
chat service's pod. The caller needs RBAC to create workspacestartrequests.coder.com in the
namespace (the built-in `edit` role has it).

    start_with_mcp.py --url http://wso-mcp.wso-system:8090/mcp \
        --token-file /var/run/secrets/wso/token --chat-id 9d0c2f5e-1b7a-4c1e-9a51-3f0f6b2d8e11
    start_with_mcp.py ... --arguments '{"owner": "alice", "name": "dev", "timeout": "5m"}'

Prints the tool result (JSON, the shape of Coder's start_workspace result) on stdout and
progress on stderr. Exit codes: 0 started, 1 the start failed (the result says why), 2 the
server refused the call (an MCP error: invalid arguments, or a token it does not accept),
3 the server could not be reached.
"""

import argparse
import asyncio
import json
import sys

import httpx2
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


async def start(url: str, token: str, tool: str, arguments: dict) -> int:
    # The token goes in every HTTP request; the server checks it with a TokenReview.
    headers = {"Authorization": f"Bearer {token}"}
    # No read timeout: a start can take minutes while the server streams progress.
    timeout = httpx2.Timeout(30.0, read=None)
    async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            tools = await client.list_tools()
            log("tools:", ", ".join(t.name for t in tools.tools))

            async def progress(step: float, total: float | None, message: str | None) -> None:
                log(f"progress {step:g}: {message}")

            result = await client.call_tool(tool, arguments, progress_callback=progress)
            # The result's structured content is the same JSON object as its text content.
            print(json.dumps(result.structured_content, indent=2))
            return 1 if result.is_error else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="MCP endpoint, e.g. http://wso-mcp.wso-system:8090/mcp")
    p.add_argument("--token-file", required=True, help="file holding the caller's ServiceAccount token")
    p.add_argument("--tool", default="start_workspace", help="start_workspace or get_workspace_start")
    p.add_argument("--chat-id", help="start the workspace bound to this Coder chat")
    p.add_argument("--arguments", default="{}", help="further tool arguments as a JSON object")
    args = p.parse_args()

    arguments = json.loads(args.arguments)
    if args.chat_id:
        arguments["chat_id"] = args.chat_id
    with open(args.token_file) as f:
        token = f.read().strip()
    try:
        return asyncio.run(start(args.url, token, args.tool, arguments))
    except Exception as e:
        # The client raises from inside task groups: look for the MCP error in the group.
        error = find_mcp_error(e)
        if error is not None:
            # Refused by the server: invalid arguments (the message names the argument) or a
            # token it does not accept (HTTP 401).
            log(f"MCP error {error.code}: {error.message}")
            return 2
        log(f"cannot call the MCP server: {e!r}")
        return 3


def find_mcp_error(e: BaseException) -> MCPError | None:
    if isinstance(e, MCPError):
        return e
    if isinstance(e, BaseExceptionGroup):
        for inner in e.exceptions:
            found = find_mcp_error(inner)
            if found is not None:
                return found
    return None


if __name__ == "__main__":
    sys.exit(main())
