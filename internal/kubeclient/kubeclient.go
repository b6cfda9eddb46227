// Package kubeclient is what a function asks the API server for with the core group and
// TokenReviews alone: a workspace's Secrets and ConfigMaps, provision's Nodes and the Pods on
// them (a list, and a list-watch through Core), TokenReviews of a function's callers, and
// job-run's progress annotation on its own Pod. It is client-go's REST client on a scheme of
// those two API groups.
//
// Why not the generated clientset: linking k8s.io/client-go/kubernetes registers every API group
// of Kubernetes in its scheme when the process starts, and a function pays for that on every
// scale from zero (bench/README.md, FunctionStart). tune's Jobs and serve's Pods and Knative
// Services keep the clientset (internal/compose/assembly/clientset); the other functions, job-run
// and every function's caller check need only this.
package kubeclient

import (
	"context"
	"encoding/json"
	"fmt"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
)

// Client reads Secrets and ConfigMaps, lists Nodes and Pods, creates TokenReviews and
// annotates Pods. Its errors are the API server's
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

// Nodes lists the Nodes opts selects.
func (c *Client) Nodes(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error) {
	var l corev1.NodeList
	if err := c.core.Get().Resource("nodes").VersionedParams(&opts, metav1.ParameterCodec).Do(ctx).Into(&l); err != nil {
		return nil, err
	}
	return &l, nil
}

// Pods lists the Pods of namespace (every namespace when empty) opts selects.
func (c *Client) Pods(ctx context.Context, namespace string, opts metav1.ListOptions) (*corev1.PodList, error) {
	var l corev1.PodList
	if err := c.core.Get().Namespace(namespace).Resource("pods").VersionedParams(&opts, metav1.ParameterCodec).Do(ctx).Into(&l); err != nil {
		return nil, err
	}
	return &l, nil
}

// Core is the REST client of the core group, for client-go's list-watches
// (cache.NewFilteredListWatchFromClient) of the kinds above.
func (c *Client) Core() rest.Interface { return c.core }
