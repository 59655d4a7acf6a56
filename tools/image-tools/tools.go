//go:build tools

// Package tools pins umoci, which assembles the operator's OCI image (scripts/image.sh).
package tools

import (
	_ "github.com/opencontainers/umoci/cmd/umoci"
)
