//go:build tools

// Package tools pins the etcd server command the envtest-based tests run against (see hack/envtest.sh).
package tools

import _ "go.etcd.io/etcd/server/v3"
