// Command mcp-probe calls one tool of an MCP server over Streamable HTTP and reports the result.
//
//	mcp-probe -url http://10.0.0.12:8090/mcp -token-file /var/run/secrets/wso/token \
//	    -tool start_workspace -arguments '{"owner":"alice","name":"dev"}'
//
// It sends initialize, notifications/initialized and tools/call (each a POST with the bearer
// token; the session id is echoed when the server sets one), reads each answer as JSON or as a
// text/event-stream, prints the tool result's JSON on stdout and writes a one-line summary to
// /dev/termination-log (what the kubelet puts in the pod's status). Exit codes: 0 the tool
// succeeded, 1 the tool result is an error, 2 the server refused (HTTP or JSON-RPC error),
// 3 it could not be reached.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

type rpcResponse struct {
	ID     *int            `json:"id"`
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

type client struct {
	url, token, session string
	http                *http.Client
}

func (c *client) post(body any) (*http.Response, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequest(http.MethodPost, c.url, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("MCP-Protocol-Version", "2025-06-18")
	if c.session != "" {
		req.Header.Set("Mcp-Session-Id", c.session)
	}
	return c.http.Do(req)
}

// call sends a request and returns the response with the same id.
func (c *client) call(id int, method string, params any) (*rpcResponse, error) {
	resp, err := c.post(map[string]any{"jsonrpc": "2.0", "id": id, "method": method, "params": params})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if s := resp.Header.Get("Mcp-Session-Id"); s != "" {
		c.session = s
	}
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return nil, fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		return readEvents(resp.Body, id)
	}
	var r rpcResponse
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, err
	}
	return &r, nil
}

// readEvents reads SSE events until the JSON-RPC response with `id` (progress notifications
// are printed to stderr).
func readEvents(body io.Reader, id int) (*rpcResponse, error) {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var data strings.Builder
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "data:") {
			data.WriteString(strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
			continue
		}
		if line != "" || data.Len() == 0 {
			continue
		}
		var r rpcResponse
		if err := json.Unmarshal([]byte(data.String()), &r); err == nil {
			if r.ID != nil && *r.ID == id {
				return &r, nil
			}
			fmt.Fprintln(os.Stderr, "event:", data.String())
		}
		data.Reset()
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("the event stream ended without the response to request %d", id)
}

func report(code int, summary string) {
	_ = os.WriteFile("/dev/termination-log", []byte(summary), 0o644)
	fmt.Fprintln(os.Stderr, summary)
	os.Exit(code)
}

func main() {
	url := flag.String("url", "", "MCP endpoint, e.g. http://<service ip>:8090/mcp")
	tokenFile := flag.String("token-file", "", "file holding the caller's ServiceAccount token")
	tool := flag.String("tool", "start_workspace", "tool to call")
	arguments := flag.String("arguments", "{}", "tool arguments as a JSON object")
	timeout := flag.Duration("timeout", 5*time.Minute, "overall timeout")
	flag.Parse()

	token, err := os.ReadFile(*tokenFile)
	if err != nil {
		report(3, "cannot read the token: "+err.Error())
	}
	var args map[string]any
	if err := json.Unmarshal([]byte(*arguments), &args); err != nil {
		report(2, "bad -arguments: "+err.Error())
	}
	c := &client{url: *url, token: strings.TrimSpace(string(token)), http: &http.Client{Timeout: *timeout}}

	init, err := c.call(1, "initialize", map[string]any{
		"protocolVersion": "2025-06-18",
		"capabilities":    map[string]any{},
		"clientInfo":      map[string]any{"name": "wso-mcp-probe", "version": "1"},
	})
	if err != nil {
		report(3, "initialize: "+err.Error())
	}
	if init.Error != nil {
		report(2, fmt.Sprintf("initialize: JSON-RPC error %d: %s", init.Error.Code, init.Error.Message))
	}
	if resp, err := c.post(map[string]any{"jsonrpc": "2.0", "method": "notifications/initialized"}); err == nil {
		resp.Body.Close()
	}
	res, err := c.call(2, "tools/call", map[string]any{"name": *tool, "arguments": args})
	if err != nil {
		report(3, "tools/call: "+err.Error())
	}
	if res.Error != nil {
		report(2, fmt.Sprintf("tools/call: JSON-RPC error %d: %s", res.Error.Code, res.Error.Message))
	}
	var result struct {
		IsError           bool            `json:"isError"`
		StructuredContent json.RawMessage `json:"structuredContent"`
	}
	if err := json.Unmarshal(res.Result, &result); err != nil {
		report(2, "tools/call: unreadable result: "+err.Error())
	}
	fmt.Println(string(result.StructuredContent))
	summary := string(result.StructuredContent)
	if len(summary) > 3500 {
		summary = summary[:3500]
	}
	if result.IsError {
		report(1, summary)
	}
	report(0, summary)
}
