package deploy_test

import (
	"bufio"
	"bytes"
	"fmt"
	"path/filepath"
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/kaitoflow/kaitoflow/functions/serve/knative"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/testenv"
)

var schemaNamespaces = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }

// objects reaches any kind the API server serves, by discovery.
type objects struct {
	dyn    dynamic.Interface
	mapper meta.RESTMapper
}

func newObjects(cfg *rest.Config) objects {
	dc := discovery.NewDiscoveryClientForConfigOrDie(cfg)
	return objects{dyn: dynamic.NewForConfigOrDie(cfg), mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))}
}

// moduleDir is a directory of a module in the module cache (go.mod pins version), for CRDs.
func moduleDir(t *testing.T, module, version string, elem ...string) string {
	t.Helper()
	dir, err := testenv.ModuleDir(module, version)
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(append([]string{dir}, elem...)...)
}

// of is the client for u's kind, in u's namespace when the kind is namespaced.
func (o objects) of(u *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := u.GroupVersionKind()
	m, err := o.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("the API server does not know %s: %w", gvk, err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return o.dyn.Resource(m.Resource).Namespace(u.GetNamespace()), nil
	}
	return o.dyn.Resource(m.Resource), nil
}

// Stand-in image names for the drivers that need them: the box's kubelet is kwok, which pulls
// nothing, and manifests are only built and validated.
const (
	testTrainerImage = "example.azurecr.io/kaitoflow/trainer:test"
	testJobRunImage  = "example.azurecr.io/kaitoflow/job-run:test"
	testProxyImage   = "example.azurecr.io/kaitoflow/chat-proxy:test"
)

// testDrivers are the cluster drivers with provider, and the images a deployment configures.
func testDrivers(provider string) assembly.Drivers {
	return assembly.Drivers{Provider: provider, Trainer: "job", Deployer: "knative",
		TrainerImage: testTrainerImage, WrapperImage: testJobRunImage, ProxyImage: testProxyImage}
}

// proxyOptions are the knative deployer's defaults with chat-proxy's image.
func proxyOptions() knative.Options {
	o := knative.DefaultOptions()
	o.ProxyImage = testProxyImage
	return o
}
