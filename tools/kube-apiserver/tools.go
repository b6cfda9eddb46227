//go:build tools

// Package tools pins the kube-apiserver command so `go build k8s.io/kubernetes/cmd/kube-apiserver`
// resolves from this module. The envtest tests need a real API server and the module proxy is the
// only source here, so it is built from source (see hack/envtest.sh).
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
