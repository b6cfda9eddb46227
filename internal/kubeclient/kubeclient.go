// Package kubeclient reads the few kinds a function asks the API server for by itself — a
// workspace's Secrets and ConfigMaps, TokenReviews of its callers, and job-run's progress
// annotation on its own Pod — with client-go's REST
// client on a scheme of those two API groups alone.
//
// Why not the generated clientset: linking k8s.io/client-go/kubernetes registers every API group
// of Kubernetes in its scheme when the process starts, and a function whose image would otherwise
// start in a few milliseconds pays for that on every scale from zero (bench/README.md,
// FunctionStart). The steps that manage Jobs, Pods, Nodes and Knative Services keep the clientset;
// publish, status, signals, dead letters and every function's caller check need only this.
package kubeclient

import (
	"context"
	"encoding/json"
	"fmt"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
)

// Client reads Secrets and ConfigMaps, creates TokenReviews and annotates Pods. Its errors are the API server's
// (k8s.io/apimachinery/pkg/api/errors tells a NotFound from a Forbidden).
type Client struct {
	core, authn rest.Interface
}

// New returns a Client that talks to the API server cfg names, as cfg's identity.
func New(cfg *rest.Config) (*Client, error) {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, authenticationv1.AddToScheme} {
		if err := add(scheme); err != nil {
			return nil, fmt.Errorf("kubernetes scheme: %w", err)
		}
	}
	codecs := serializer.NewCodecFactory(scheme).WithoutConversion()
	core, err := restClient(cfg, codecs, "/api", corev1.SchemeGroupVersion)
	if err != nil {
		return nil, err
	}
	authn, err := restClient(cfg, codecs, "/apis", authenticationv1.SchemeGroupVersion)
	if err != nil {
		return nil, err
	}
	return &Client{core: core, authn: authn}, nil
}

func restClient(cfg *rest.Config, codecs runtime.NegotiatedSerializer, path string, gv schema.GroupVersion) (*rest.RESTClient, error) {
	c := rest.CopyConfig(cfg)
	c.APIPath = path
	c.GroupVersion = &gv
	c.NegotiatedSerializer = codecs
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", gv, err)
	}
	return rc, nil
}

// Secret reads the Secret namespace/name.
func (c *Client) Secret(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
	var s corev1.Secret
	if err := c.core.Get().Namespace(namespace).Resource("secrets").Name(name).Do(ctx).Into(&s); err != nil {
		return nil, err
	}
	return &s, nil
}

// ConfigMap reads the ConfigMap namespace/name.
func (c *Client) ConfigMap(ctx context.Context, namespace, name string) (*corev1.ConfigMap, error) {
	var cm corev1.ConfigMap
	if err := c.core.Get().Namespace(namespace).Resource("configmaps").Name(name).Do(ctx).Into(&cm); err != nil {
		return nil, err
	}
	return &cm, nil
}

// ReviewToken asks the API server who presented token, for audiences (the caller's identity
// needs tokenreviews: create).
func (c *Client) ReviewToken(ctx context.Context, token string, audiences []string) (*authenticationv1.TokenReviewStatus, error) {
	in := &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: audiences}}
	var out authenticationv1.TokenReview
	if err := c.authn.Post().Resource("tokenreviews").Body(in).Do(ctx).Into(&out); err != nil {
		return nil, err
	}
	return &out.Status, nil
}

// AnnotatePod sets annotations on the Pod namespace/name, leaving its others as they are (a JSON
// merge patch: the caller needs pods: patch, and nothing else of the Pod's).
func (c *Client) AnnotatePod(ctx context.Context, namespace, name string, annotations map[string]string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": annotations}})
	if err != nil {
		return fmt.Errorf("annotations of pod %s/%s: %w", namespace, name, err)
	}
	return c.core.Patch(types.MergePatchType).Namespace(namespace).Resource("pods").Name(name).Body(patch).Do(ctx).Error()
}
