package assembly

import (
	"testing"

	"github.com/kaitoflow/kaitoflow/functions/provision"
	"github.com/kaitoflow/kaitoflow/functions/publish"
	"github.com/kaitoflow/kaitoflow/functions/serve"
	"github.com/kaitoflow/kaitoflow/functions/tune"
)

// A step's clients run as the ServiceAccount named after its function (deploy/knative/rbac.yaml).
func TestIdentitiesAreTheFunctionsNames(t *testing.T) {
	for _, tc := range []struct{ identity, function string }{
		{IdentityProvision, provision.Name},
		{IdentityTune, tune.Name},
		{IdentityPublish, publish.Name},
		{IdentityServe, serve.Name},
	} {
		if tc.identity != tc.function {
			t.Errorf("identity %q for function %q", tc.identity, tc.function)
		}
	}
}
