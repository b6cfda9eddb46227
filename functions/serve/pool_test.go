package serve

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/kaitoflow/kaitoflow/events"
)

// The rules both deployers apply before touching a service: one table, so the sim and Knative
// cannot disagree (they did: the sim let a pool mount a volume adapter into every member's pods).
func TestAdmitService(t *testing.T) {
	ref := func(gen int64) events.Ref { return events.Ref{Namespace: "default", Name: "ws", Generation: gen} }
	pooled := func(gen int64, adapters ...Adapter) Deployment {
		return Deployment{Ref: ref(gen), Service: "pool", Pool: "pool", Adapters: adapters}
	}
	alone := Deployment{Ref: ref(2), Service: "ws"}
	rollback := Deployment{Ref: ref(3), Service: "ws", Serving: 1}
	image := Adapter{Name: "a", Image: "r.example.com/a:1"}
	volume := Adapter{Name: "v", Volume: &corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "c"}}}
	for _, tc := range []struct {
		name   string
		d      Deployment
		svc    Service
		apply  bool
		reason string // the permanent refusal's, "" for none
		says   string
	}{
		{"a new service", alone, Service{}, true, "", ""},
		{"a newer generation", alone, Service{Exists: true, Ours: true, Member: &Member{Generation: 1}}, true, "", ""},
		{"a redelivery", alone, Service{Exists: true, Ours: true, Member: &Member{Generation: 2}}, false, "", ""},
		{"an older generation arriving late", alone, Service{Exists: true, Ours: true, Member: &Member{Generation: 3}}, false, "", ""},
		{"another's service of the same name", alone, Service{Exists: true}, false, events.ReasonForeignObject, "serving pool's"},
		{"a pool's name taken by another", pooled(1, image), Service{Exists: true}, false, events.ReasonForeignObject, "not serving pool pool"},
		{"a volume adapter in a pool", pooled(1, volume), Service{}, false, events.ReasonNotSupported, "images only"},
		{"a volume adapter alone", Deployment{Ref: ref(1), Service: "ws", Adapters: []Adapter{volume}}, Service{}, true, "", ""},
		{"a pool member with other pods", pooled(1, image), Service{Exists: true, Ours: true, Runs: "t1", Wants: "t2"}, false, events.ReasonInvalidWorkspace, "runs another pod"},
		{"a pool member with the same pods", pooled(1, image), Service{Exists: true, Ours: true, Runs: "t1", Wants: "t1"}, true, "", ""},
		{"a rollback", rollback, Service{Exists: true, Ours: true, Member: &Member{Generation: 3}}, true, "", ""},
		{"a rollback done", rollback, Service{Exists: true, Ours: true, Member: &Member{Generation: 3, Serving: 1}}, false, "", ""},
		{"a rollback to the adapter serving beside a canary ends it", rollback, Service{Exists: true, Ours: true, Member: &Member{Generation: 3, Serving: 1, Canary: 3}}, true, "", ""},
		{"a rollback with nothing served", rollback, Service{}, false, events.ReasonNotSupported, "no service running"},
		{"a rollback to a workspace the service does not serve", rollback, Service{Exists: true, Ours: true}, false, events.ReasonNotSupported, "no service running"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			apply, err := AdmitService(tc.d, tc.svc)
			if apply != tc.apply {
				t.Errorf("apply %v, want %v (err %v)", apply, tc.apply, err)
			}
			if tc.reason == "" {
				if err != nil {
					t.Errorf("refused: %v", err)
				}
				return
			}
			if pe, ok := events.AsPermanent(err); !ok || pe.Reason != tc.reason || !strings.Contains(err.Error(), tc.says) {
				t.Errorf("err %v, want %s saying %q", err, tc.reason, tc.says)
			}
		})
	}
}
