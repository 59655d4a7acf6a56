// Package gitopshealth tests the GitOps health rules shipped in
// charts/workspace-start-operator/gitops against the WorkspaceStartRequest
// status fixtures in tests/fixtures/status. The Argo CD Lua script runs in
// gopher-lua (the interpreter Argo CD embeds) and the Flux expressions run in
// cel-go with the environment of fluxcd/pkg/runtime/cel.
//
// Run: cd tools/gitops-health && go test ./...
package gitopshealth
