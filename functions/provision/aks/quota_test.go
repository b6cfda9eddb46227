package aks

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v8"
	computefake "github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v8/fake"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/functions/provision"
	"github.com/kaitoflow/kaitoflow/presets"
)

// usageServer is the Compute usage API's fake (the Azure SDK's own) for eastus: each family's
// used and limit vCPUs, over two pages as ARM pages them.
func usageServer(t *testing.T, families map[string][2]int) *Quota {
	t.Helper()
	srv := computefake.UsageServer{
		NewListPager: func(location string, _ *armcompute.UsageClientListOptions) (resp azfake.PagerResponder[armcompute.UsageClientListResponse]) {
			if location != "eastus" {
				resp.AddResponseError(http.StatusNotFound, "LocationNotFound")
				return
			}
			var page []*armcompute.Usage
			for value, n := range families {
				page = append(page, &armcompute.Usage{
					Name:         &armcompute.UsageName{Value: to.Ptr(value), LocalizedValue: to.Ptr(localized(value) + " vCPUs")},
					CurrentValue: to.Ptr(int32(n[0])), Limit: to.Ptr(int64(n[1])), Unit: to.Ptr("Count"),
				})
				if len(page) == 2 {
					resp.AddPage(http.StatusOK, armcompute.UsageClientListResponse{ListUsagesResult: armcompute.ListUsagesResult{Value: page}}, nil)
					page = nil
				}
			}
			resp.AddPage(http.StatusOK, armcompute.UsageClientListResponse{ListUsagesResult: armcompute.ListUsagesResult{Value: page}}, nil)
			return
		},
	}
	q, err := NewQuota("00000000-0000-0000-0000-000000000000", "eastus", false, &azfake.TokenCredential{},
		&arm.ClientOptions{ClientOptions: policy.ClientOptions{Transport: computefake.NewUsageServerTransport(&srv)}})
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// localized is the name the usage API shows people, as it spells the families used here.
func localized(value string) string {
	switch value {
	case "standardNCSv3Family":
		return "Standard NCSv3 Family"
	case "StandardNCADSA100v4Family":
		return "Standard NCADS_A100_v4 Family"
	case "cores":
		return "Total Regional"
	case "lowPriorityCores":
		return "Total Regional Low-priority"
	}
	return value
}

func seedWorkspace(instanceType string) *kaito.Workspace {
	ws := &kaito.Workspace{Tuning: &kaito.TuningSpec{Method: "qlora", Preset: &kaito.PresetSpec{PresetMeta: kaito.PresetMeta{Name: "phi-3-mini-128k-instruct"}}}}
	ws.Name, ws.Namespace = "quota", "default"
	ws.Resource.InstanceType = instanceType
	return ws
}

func TestQuotaMovesTheFitCheckOrRefusesWithTheNumbers(t *testing.T) {
	catalog, err := presets.Default()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// Without a quota check the seed's cheapest fit is a T4, whose family this region has used
	// up; it has no quota for V100s (NCSv3) or A10s either; the A100 family has 200 free, the
	// region 90 in all.
	free, err := (&presets.Planner{Catalog: catalog}).Plan(ctx, seedWorkspace(""))
	if err != nil {
		t.Fatal(err)
	}
	if free.InstanceType != "Standard_NC4as_T4_v3" {
		t.Fatalf("the cheapest fit is %s; this test expects Standard_NC4as_T4_v3", free.InstanceType)
	}
	quota := usageServer(t, map[string][2]int{"standardNCSv3Family": {0, 0}, "Standard NCASv3_T4 Family": {8, 8},
		"StandardNVADSA10v5Family": {0, 0}, "StandardNCADSA100v4Family": {0, 200}, "cores": {10, 100}})
	planner := &presets.Planner{Catalog: catalog, Quota: quota}

	for _, tc := range []struct {
		name, instanceType string
		want               string // the plan's SKU; or the refusal's message
		refused            bool
	}{
		{name: "no SKU named: the next SKU that fits and has quota", want: "Standard_NC24ads_A100_v4"},
		{name: "the SKU named has no quota", instanceType: "Standard_NC6s_v3", refused: true,
			want: "resource.instanceType Standard_NC6s_v3: needs 6 vCPUs of Standard NCSv3 Family (1× Standard_NC6s_v3); 0 of 0 free in eastus"},
		{name: "the SKU named has quota", instanceType: "Standard_NC24ads_A100_v4", want: "Standard_NC24ads_A100_v4"},
		{name: "past the region's total", instanceType: "Standard_NC96ads_A100_v4", refused: true,
			want: "needs 96 vCPUs of Total Regional (1× Standard_NC96ads_A100_v4); 90 of 100 free in eastus"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plan, err := planner.Plan(ctx, seedWorkspace(tc.instanceType))
			if tc.refused {
				p, ok := events.AsPermanent(err)
				if !ok || p.Reason != events.ReasonInsufficientQuota || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("got %v\nwant a permanent %s refusal saying %q", err, events.ReasonInsufficientQuota, tc.want)
				}
				return
			}
			if err != nil || plan.InstanceType != tc.want {
				t.Fatalf("plan %v, %v; want %s", plan, err, tc.want)
			}
			if tc.instanceType == "" && !strings.Contains(strings.Join(plan.Reasons, "\n"), "no quota: needs 4 vCPUs of Standard NCASv3_T4 Family (1× Standard_NC4as_T4_v3); 0 of 8 free in eastus") {
				t.Errorf("the plan does not say why the cheaper SKUs were passed over: %q", plan.Reasons)
			}
		})
	}
}

// A workspace whose SKU has no quota fails in provision before anything is created: the agent
// pools API (the Azure SDK's fake server) sees no create.
func TestNoQuotaCreatesNoPool(t *testing.T) {
	catalog, err := presets.Default()
	if err != nil {
		t.Fatal(err)
	}
	a := newARM()
	planner := &presets.Planner{Catalog: catalog, Quota: usageServer(t, map[string][2]int{"cores": {0, 100}})}
	f := provision.New(provider(t, a, false), planner, &provision.MemoryPending{}, provision.Options{Log: slog.New(slog.DiscardHandler)})
	ws := seedWorkspace("Standard_NC24ads_A100_v4")
	ws.Tuning.Input = &kaito.DataSource{URLs: []string{"https://example.com/dolly.parquet"}}
	ws.Tuning.Output = &kaito.DataDestination{Image: "example.azurecr.io/adapters/phi-3:0.0.1", ImagePushSecret: "acr"}
	ws.Resource.LabelSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "quota"}}
	ev := events.Must(events.New("test", events.WorkspaceRequested, events.WorkspaceRequested, events.Ref{Namespace: "default", Name: "quota", Generation: 1}, ws, nil))
	_, err = f.Handle(context.Background(), ev)
	p, ok := events.AsPermanent(err)
	if !ok || p.Reason != events.ReasonInsufficientQuota || !strings.Contains(err.Error(), "needs 24 vCPUs of StandardNCADSA100v4Family (1× Standard_NC24ads_A100_v4); 0 of 0 free in eastus") {
		t.Fatalf("got %v", err)
	}
	if a.creates != 0 {
		t.Fatalf("%d agent pools created", a.creates)
	}
}

// Spot pools count against the region's low-priority vCPUs alone: a family without on-demand
// quota is no obstacle, and too few low-priority vCPUs refuse with the numbers.
func TestSpotQuotaIsTheLowPriorityVCPUs(t *testing.T) {
	catalog, err := presets.Default()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		spot     [2]int
		want     string
		refusing bool
	}{
		{"room for the spot VM", [2]int{0, 100}, "Standard_NC24ads_A100_v4", false},
		{"no room", [2]int{90, 100}, "resource.instanceType Standard_NC24ads_A100_v4: needs 24 vCPUs of Total Regional Low-priority (1× Standard_NC24ads_A100_v4); 10 of 100 free in eastus", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := usageServer(t, map[string][2]int{"StandardNCADSA100v4Family": {0, 0}, "cores": {0, 0}, "lowPriorityCores": tc.spot})
			q.Spot = true
			plan, err := (&presets.Planner{Catalog: catalog, Quota: q}).Plan(context.Background(), seedWorkspace("Standard_NC24ads_A100_v4"))
			if tc.refusing {
				if p, ok := events.AsPermanent(err); !ok || p.Reason != events.ReasonInsufficientQuota || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("got %v\nwant %q", err, tc.want)
				}
				return
			}
			if err != nil || plan.InstanceType != tc.want {
				t.Fatalf("plan %v, %v", plan, err)
			}
		})
	}
}
