package main

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kaitoflow/kaitoflow/internal/status"
)

func TestWaitCondition(t *testing.T) {
	ready := status.Workspace{Name: "ws", Phase: status.Ready, Conditions: []metav1.Condition{{Type: status.CondWorkspaceReady, Status: metav1.ConditionTrue}}}
	tuning := status.Workspace{Name: "ws", Phase: status.Tuning, Conditions: []metav1.Condition{{Type: status.CondJobStarted, Status: metav1.ConditionTrue}}}
	failed := status.Workspace{Name: "ws", Phase: status.Failed, Failure: &status.Failure{Reason: "GPUOutOfMemory", Message: "no SKU fits"}}
	deleted := status.Workspace{Name: "ws", Phase: status.Deleted}
	for _, tc := range []struct {
		name    string
		forWhat string
		w       status.Workspace
		done    bool
		err     string
	}{
		{"met", "condition=WorkspaceReady", ready, true, ""},
		{"met, status named in any case", "condition=WorkspaceReady=true", ready, true, ""},
		{"not yet", "condition=WorkspaceReady", tuning, false, ""},
		{"another condition met", "condition=JobStarted", tuning, true, ""},
		{"failed while awaited", "condition=WorkspaceReady", failed, true, "Failed while waiting for condition WorkspaceReady: GPUOutOfMemory: no SKU fits"},
		{"deleted while awaited", "condition=InferenceReady", deleted, true, "deleted while waiting"},
		{"delete awaited", "delete", deleted, true, ""},
		{"delete not yet", "delete", ready, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			met, err := waitCondition(tc.forWhat)
			if err != nil {
				t.Fatal(err)
			}
			done, err := met(tc.w)
			if done != tc.done || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("done %v err %v, want done %v err %q", done, err, tc.done, tc.err)
			}
		})
	}
	for _, bad := range []string{"", "ready", "condition=", "jsonpath={.status}"} {
		if _, err := waitCondition(bad); err == nil {
			t.Errorf("--for %q accepted", bad)
		}
	}
}
