// A minimal MCP (Streamable HTTP) client that runs as a pod on the test node: it calls one tool
// of the operator's MCP server with the pod's projected ServiceAccount token. Standard library
// only. Not published; built by scripts/node-bins.sh into the image localhost/wso-mcp-probe:1.
module example.invalid/mcp-probe

go 1.26.0
