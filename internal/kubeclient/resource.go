package kubeclient

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
)

// Resource is the typed client of one resource in one namespace (empty: cluster-scoped, or every
// namespace), with the generated clients' signatures for the verbs the functions use. It is
// client-go's REST request builder and nothing more. client-go's own generic client (gentype)
// would do the same, but it links server-side apply's support (structured-merge-diff,
// kube-openapi, protobuf): about 3 MiB more resident in every binary at start
// (bench/README.md, FunctionStart), for a verb no function uses.
type Resource[T Object, L runtime.Object] struct {
	rc        rest.Interface
	params    runtime.ParameterCodec
	resource  string
	namespace string
	newT      func() T
	newL      func() L
}

// Object is what a Resource reads and writes: a Kubernetes object with its metadata.
type Object interface {
	runtime.Object
	metav1.Object
}

// resource is the client of a resource whose objects are E and whose lists are EL.
func resource[E, EL any, T interface {
	*E
	Object
}, L interface {
	*EL
	runtime.Object
}](rc rest.Interface, params runtime.ParameterCodec, name, namespace string) Resource[T, L] {
	return Resource[T, L]{rc: rc, params: params, resource: name, namespace: namespace, newT: func() T { return new(E) }, newL: func() L { return new(EL) }}
}

// Get reads the object name.
func (r Resource[T, L]) Get(ctx context.Context, name string, opts metav1.GetOptions) (T, error) {
	out := r.newT()
	err := r.rc.Get().Namespace(r.namespace).Resource(r.resource).Name(name).VersionedParams(&opts, r.params).Do(ctx).Into(out)
	return out, err
}

// List reads the objects opts selects.
func (r Resource[T, L]) List(ctx context.Context, opts metav1.ListOptions) (L, error) {
	out := r.newL()
	req := r.rc.Get().Namespace(r.namespace).Resource(r.resource).VersionedParams(&opts, r.params)
	if opts.TimeoutSeconds != nil {
		req = req.Timeout(time.Duration(*opts.TimeoutSeconds) * time.Second)
	}
	err := req.Do(ctx).Into(out)
	return out, err
}

// Watch watches the objects opts selects.
func (r Resource[T, L]) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	req := r.rc.Get().Namespace(r.namespace).Resource(r.resource).VersionedParams(&opts, r.params)
	if opts.TimeoutSeconds != nil {
		req = req.Timeout(time.Duration(*opts.TimeoutSeconds) * time.Second)
	}
	return req.Watch(ctx)
}

// Create creates obj.
func (r Resource[T, L]) Create(ctx context.Context, obj T, opts metav1.CreateOptions) (T, error) {
	out := r.newT()
	err := r.rc.Post().Namespace(r.namespace).Resource(r.resource).VersionedParams(&opts, r.params).Body(obj).Do(ctx).Into(out)
	return out, err
}

// Update replaces obj (at its resourceVersion, when it has one).
func (r Resource[T, L]) Update(ctx context.Context, obj T, opts metav1.UpdateOptions) (T, error) {
	out := r.newT()
	err := r.rc.Put().Namespace(r.namespace).Resource(r.resource).Name(obj.GetName()).VersionedParams(&opts, r.params).Body(obj).Do(ctx).Into(out)
	return out, err
}

// Delete deletes the object name.
func (r Resource[T, L]) Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error {
	return r.rc.Delete().Namespace(r.namespace).Resource(r.resource).Name(name).Body(&opts).Do(ctx).Error()
}

// Patch patches the object name (or its subresources) with data of type pt.
func (r Resource[T, L]) Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions,
	subresources ...string) (T, error) {
	out := r.newT()
	err := r.rc.Patch(pt).Namespace(r.namespace).Resource(r.resource).Name(name).SubResource(subresources...).
		VersionedParams(&opts, r.params).Body(data).Do(ctx).Into(out)
	return out, err
}
