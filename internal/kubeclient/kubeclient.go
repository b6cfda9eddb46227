// Package kubeclient is the Kubernetes client of the function binaries: typed clients on
// client-go's REST client for the kinds the functions touch — Secrets, ConfigMaps, Pods and their logs, Nodes, Events, Jobs — and
// TokenReviews, on a scheme of the core, batch and authentication groups alone.
//
// Why not the generated clientset: linking k8s.io/client-go/kubernetes registers every API group
// of Kubernetes in its scheme when the process starts, and a function pays for that on every
// scale from zero (bench/README.md, FunctionStart). The clients here have the generated ones'
// methods, so code reads the same; the CLI and the controller keep the clientset.
package kubeclient

import (
	"context"
	"fmt"
	"io"
	"net/http"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"k8s.io/client-go/util/flowcontrol"

	authenticationv1 "k8s.io/api/authentication/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
)

// Client makes the typed clients of one identity. Its errors are the API server's
// (k8s.io/apimachinery/pkg/api/errors tells a NotFound from a Forbidden).
type Client struct {
	core, batch, authn rest.Interface
	params             runtime.ParameterCodec
}

// New returns a Client that talks to the API server cfg names, as cfg's identity.
func New(cfg *rest.Config) (*Client, error) {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, batchv1.AddToScheme, authenticationv1.AddToScheme} {
		if err := add(scheme); err != nil {
			return nil, fmt.Errorf("kubernetes scheme: %w", err)
		}
	}
	codecs := serializer.NewCodecFactory(scheme).WithoutConversion()
	// One HTTP client and one rate limiter for the three groups, as the generated clientset
	// shares them between its groups: QPS and Burst bound the identity, not each group.
	shared := rest.CopyConfig(cfg)
	if shared.RateLimiter == nil {
		qps, burst := shared.QPS, shared.Burst
		if qps == 0 {
			qps, burst = rest.DefaultQPS, rest.DefaultBurst
		}
		if qps > 0 {
			shared.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(qps, burst)
		}
	}
	hc, err := rest.HTTPClientFor(shared)
	if err != nil {
		return nil, fmt.Errorf("kubernetes HTTP client: %w", err)
	}
	c := &Client{params: runtime.NewParameterCodec(scheme)}
	if c.core, err = restClient(shared, hc, codecs, "/api", corev1.SchemeGroupVersion); err != nil {
		return nil, err
	}
	if c.batch, err = restClient(shared, hc, codecs, "/apis", batchv1.SchemeGroupVersion); err != nil {
		return nil, err
	}
	if c.authn, err = restClient(shared, hc, codecs, "/apis", authenticationv1.SchemeGroupVersion); err != nil {
		return nil, err
	}
	return c, nil
}

func restClient(cfg *rest.Config, hc *http.Client, codecs runtime.NegotiatedSerializer, path string, gv schema.GroupVersion) (*rest.RESTClient, error) {
	c := rest.CopyConfig(cfg)
	c.APIPath = path
	c.GroupVersion = &gv
	c.NegotiatedSerializer = codecs
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientForConfigAndClient(c, hc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", gv, err)
	}
	return rc, nil
}

// Secrets is the typed client of namespace's Secrets.
func (c *Client) Secrets(namespace string) Resource[*corev1.Secret, *corev1.SecretList] {
	return resource[corev1.Secret, corev1.SecretList](c.core, c.params, "secrets", namespace)
}

// ConfigMaps is the typed client of namespace's ConfigMaps.
func (c *Client) ConfigMaps(namespace string) Resource[*corev1.ConfigMap, *corev1.ConfigMapList] {
	return resource[corev1.ConfigMap, corev1.ConfigMapList](c.core, c.params, "configmaps", namespace)
}

// Pods is the typed client of namespace's Pods (every namespace's when empty).
func (c *Client) Pods(namespace string) Resource[*corev1.Pod, *corev1.PodList] {
	return resource[corev1.Pod, corev1.PodList](c.core, c.params, "pods", namespace)
}

// Nodes is the typed client of the cluster's Nodes.
func (c *Client) Nodes() Resource[*corev1.Node, *corev1.NodeList] {
	return resource[corev1.Node, corev1.NodeList](c.core, c.params, "nodes", metav1.NamespaceNone)
}

// Events is the typed client of namespace's core Events.
func (c *Client) Events(namespace string) Resource[*corev1.Event, *corev1.EventList] {
	return resource[corev1.Event, corev1.EventList](c.core, c.params, "events", namespace)
}

// Jobs is the typed client of namespace's Jobs (every namespace's when empty).
func (c *Client) Jobs(namespace string) Resource[*batchv1.Job, *batchv1.JobList] {
	return resource[batchv1.Job, batchv1.JobList](c.batch, c.params, "jobs", namespace)
}

// PodLogs streams the log of a container of the Pod namespace/name, as opts say (the pods/log
// subresource, which the kubelet serves through the API server).
func (c *Client) PodLogs(ctx context.Context, namespace, name string, opts *corev1.PodLogOptions) (io.ReadCloser, error) {
	return c.core.Get().Namespace(namespace).Resource("pods").Name(name).SubResource("log").VersionedParams(opts, c.params).Stream(ctx)
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
