//go:build tools

// Package tools pins golangci-lint, the linter CI runs with .golangci.yml. Built from source and
// cached outside the repository by hack/lint.sh.
package tools

import _ "github.com/golangci/golangci-lint/v2/cmd/golangci-lint"
