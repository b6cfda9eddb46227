package aks

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	azruntime "github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v8"

	"github.com/kaitoflow/kaitoflow/presets"
)

// UsageLister is what the quota check uses of armcompute.UsageClient.
type UsageLister interface {
	NewListPager(location string, o *armcompute.UsageClientListOptions) *azruntime.Pager[armcompute.UsageClientListResponse]
}

// Quota reads a region's vCPU quota through the Compute usage API (what `az vm list-usage`
// shows): the fit check reads it before an agent pool is created, so a SKU without quota is
// passed over, or refused with the numbers, instead of ARM refusing the pool after the fact.
// It needs Microsoft.Compute/locations/usages/read on the subscription.
type Quota struct {
	Usage    UsageLister
	Location string
	// Spot pools count against the region's low-priority vCPUs only.
	Spot bool
}

// NewQuota returns the quota check of a subscription's region, over an ARM client authenticated
// by cred; clientOptions may carry a test transport.
func NewQuota(subscriptionID, location string, spot bool, cred azcore.TokenCredential, clientOptions *arm.ClientOptions) (*Quota, error) {
	if subscriptionID == "" || location == "" {
		return nil, errors.New("aks quota: the subscription and the cluster's location are required")
	}
	c, err := armcompute.NewUsageClient(subscriptionID, cred, clientOptions)
	if err != nil {
		return nil, fmt.Errorf("aks quota: usage client: %w", err)
	}
	return &Quota{Usage: c, Location: location, Spot: spot}, nil
}

// Usages implements presets.Quota.
func (q *Quota) Usages(ctx context.Context) (*presets.Usages, error) {
	u := &presets.Usages{Location: q.Location, Families: map[string]presets.Usage{}, Spot: q.Spot}
	pager := q.Usage.NewListPager(q.Location, nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, classify(fmt.Errorf("list vCPU usage in %s: %w", q.Location, err))
		}
		for _, v := range page.Value {
			if v == nil || v.Name == nil || v.Name.Value == nil || v.Limit == nil || v.CurrentValue == nil {
				continue
			}
			name := strings.TrimSuffix(ptr(v.Name.LocalizedValue), " vCPUs")
			if name == "" {
				name = *v.Name.Value
			}
			u.Families[presets.FamilyKey(*v.Name.Value)] = presets.Usage{Name: name, Used: int64(*v.CurrentValue), Limit: *v.Limit}
		}
	}
	return u, nil
}
