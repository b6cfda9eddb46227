//go:build tools

// Package tools pins the Kubernetes control-plane commands so `go build k8s.io/kubernetes/cmd/...`
// resolves from this module. The envtest tests need a real API server, and the box tests a real
// scheduler and controller manager next to it; the module proxy is the only source here, so they
// are built from source (see hack/envtest.sh).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
