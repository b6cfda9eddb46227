// Package clientset gives the Parts that manage workloads — provision's nodes and NodeClaims,
// tune's Jobs, serve's Knative Services and pods, the controller — client-go's generated
// clientset and its dynamic client. It is its own package so that a function that only reads a
// Secret (publish) or nothing at all (signals) does not link the clientset, whose scheme
// registers every Kubernetes API group when the process starts.
package clientset

import (
	"fmt"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
)

// Clients are one identity's Kubernetes clients.
type Clients struct {
	Kube    kubernetes.Interface
	Dynamic dynamic.Interface
}

// For are identity's clients (see the assembly's Identity constants). client-go shares one
// transport between clients of the same config, so a Part asking twice opens no second
// connection pool.
func For(b *assembly.Builder, identity string) (*Clients, error) {
	rc, err := b.RESTConfig(identity)
	if err != nil {
		return nil, err
	}
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", identity, err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("dynamic client for %s: %w", identity, err)
	}
	return &Clients{Kube: kube, Dynamic: dyn}, nil
}
