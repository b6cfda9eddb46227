package presets

import (
	"context"
	"fmt"
	"strings"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
)

// Quota reads a region's vCPU quota: what the Compute usage API says is used and allowed, per
// quota family (aks.Quota).
type Quota interface {
	Usages(ctx context.Context) (*Usages, error)
}

// Usages are a region's vCPU usage and limits, keyed by FamilyKey of the family's name. Spot
// says the capacity is bought as spot VMs, which count against the region's low-priority vCPUs
// alone, not their family's.
type Usages struct {
	Location string
	Families map[string]Usage
	Spot     bool
}

// Usage is one quota family's.
type Usage struct {
	// Name is the family as a person reads it (the API's localized name, less " vCPUs").
	Name        string
	Used, Limit int64
}

// TotalFamily is the usage API's name for the region's total vCPUs, which a pool needs room in
// as well as in its family's; SpotFamily the region's low-priority (spot) vCPUs, the only quota
// spot VMs count against.
const (
	TotalFamily = "cores"
	SpotFamily  = "lowPriorityCores"
)

// FamilyKey is a quota family's name compared: Azure's APIs spell one family with and without
// spaces, in more than one case.
func FamilyKey(name string) string {
	return strings.ToLower(strings.ReplaceAll(name, " ", ""))
}

// Short says why nodes VMs of sku do not fit the region's quota (needs N vCPUs of the family;
// free of the limit in the region), or "" when they do. A family the region does not list has no
// quota there: 0 of 0.
func (u *Usages) Short(sku SKU, nodes int) string {
	if u == nil || sku.Family == "" {
		return ""
	}
	need := int64(sku.VCPU * max(nodes, 1))
	families := []string{sku.Family, TotalFamily}
	if u.Spot {
		families = []string{SpotFamily}
	}
	for _, fam := range families {
		q, ok := u.Families[FamilyKey(fam)]
		if !ok {
			if fam == TotalFamily {
				continue
			}
			q = Usage{Name: fam}
		}
		if free := q.Limit - q.Used; free < need {
			return fmt.Sprintf("needs %d vCPUs of %s (%d× %s); %d of %d free in %s", need, q.Name, max(nodes, 1), sku.Name, max(free, 0), q.Limit, u.Location)
		}
	}
	return ""
}

// usages reads the region's quota when the planner has a Quota (nil otherwise: not checked).
func (p *Planner) usages(ctx context.Context) (*Usages, error) {
	if p.Quota == nil {
		return nil, nil
	}
	u, err := p.Quota.Usages(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the region's vCPU quota: %w", err)
	}
	return u, nil
}

// withQuota plans with plan over the catalog, ruling out each chosen SKU the region has no quota
// for and planning again, until one has quota. A SKU the workspace names (instanceType) is not
// replaced: short of quota, it is refused with the numbers, as is a request no SKU with quota
// fits — before anything is created.
func (p *Planner) withQuota(ctx context.Context, ws *kaito.Workspace, instanceType string, plan func(*Catalog) (*events.Plan, error)) (*events.Plan, error) {
	u, err := p.usages(ctx)
	if err != nil {
		return nil, err
	}
	cat := p.Catalog
	var short []string
	for {
		pl, err := plan(cat)
		if err != nil {
			if len(short) > 0 && instanceType == "" {
				return nil, events.Permanentf(events.ReasonInsufficientQuota,
					"no SKU where the workspace fits has vCPU quota: %s (and without them: %v)", strings.Join(short, "; "), err)
			}
			return nil, err
		}
		sku, err := cat.SKU(pl.InstanceType)
		if err != nil {
			return nil, err
		}
		why := u.Short(*sku, ws.NodeCount())
		if why == "" {
			for _, s := range short {
				pl.Reasons = append(pl.Reasons, "no quota: "+s)
			}
			return pl, nil
		}
		if instanceType != "" {
			return nil, events.Permanentf(events.ReasonInsufficientQuota, "resource.instanceType %s: %s", instanceType, why)
		}
		short = append(short, why)
		cat = cat.Without(pl.InstanceType)
	}
}
