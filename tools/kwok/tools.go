//go:build tools

// Package tools pins kwok, which the box tests run to act as the kubelet of simulated nodes: it
// marks nodes Ready and moves the pods the real scheduler binds to them through their phases.
// Built from source like the control plane (see hack/envtest.sh).
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
