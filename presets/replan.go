package presets

import (
	"context"
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
)

// minRetrySeqLen is the shortest sequence a retry shortens to: below it most instruction rows
// lose their answer.
const minRetrySeqLen = 256

// Replan is the plan of the next attempt after a run ran out of GPU memory, one step smaller than
// prev: half the batch with twice the gradient accumulation (the same effective batch), else half
// the sequence, else the next SKU by price whose GPUs are larger and where the run fits even if
// the estimate is off by as much as the failed run showed. What the user set is never changed: a
// batch set in tuning.config, or a SKU set in resource.instanceType, ends the retries with a
// permanent GPUOutOfMemory error giving the advice. It returns the plan and what changed.
func (p *Planner) Replan(ctx context.Context, ws *kaito.Workspace, prev *events.Plan, f *events.TrainerFailure) (*events.Plan, []string, error) {
	if ws.Tuning == nil || prev == nil {
		return nil, nil, events.Permanentf(events.ReasonBadEvent, "re-plan: the run has no tuning spec or plan")
	}
	m, err := p.model(ctx, ws, field.NewPath("tuning", "preset"), ws.Tuning.Preset, true)
	if err != nil {
		return nil, nil, err
	}
	user, err := p.UserTrainingConfig(ctx, ws)
	if err != nil {
		return nil, nil, err
	}
	o := user.Overrides()
	batch, seq, ga := prev.BatchSize, prev.SeqLen, max(prev.GradientAccumulation, 1)
	off, factor := estimateOff(prev, f)
	var changes []string
	if off != "" {
		changes = append(changes, off)
	}
	pin := func(b, s int) Overrides {
		q := o
		q.BatchSize, q.SeqLen = &b, &s
		return q
	}
	switch {
	case o.BatchSize != nil:
		return nil, nil, p.oomAdvice(ws, prev, f, off,
			fmt.Sprintf("per_device_train_batch_size %d is set in tuning.config %s, and a retry never changes what the user set", *o.BatchSize,
				ws.Tuning.Config))
	case batch > 1:
		_, gaFixed := user["TrainingArguments"]["gradient_accumulation_steps"]
		change := fmt.Sprintf("per_device_train_batch_size %d → %d", batch, batch/2)
		nextGA := 0
		if gaFixed {
			change += "; gradient_accumulation_steps is set in tuning.config, so the effective batch halves"
		} else {
			nextGA = ga * 2
			change += fmt.Sprintf(", gradient_accumulation_steps %d → %d (the same effective batch)", ga, nextGA)
		}
		plan, err := p.tuningPlan(ws, m, user, p.Catalog, prev.InstanceType, pin(batch/2, seq), nextGA)
		return plan, append(changes, change), err
	case o.SeqLen == nil && seq/2 >= minRetrySeqLen:
		plan, err := p.tuningPlan(ws, m, user, p.Catalog, prev.InstanceType, pin(batch, seq/2), prev.GradientAccumulation)
		return plan, append(changes, fmt.Sprintf("max_seq_length %d → %d: longer rows are cut", seq, seq/2)), err
	case ws.InstanceType() != "":
		return nil, nil, p.oomAdvice(ws, prev, f, off,
			fmt.Sprintf("batch %d and sequence %d are as small as a retry makes them, and resource.instanceType %s is the user's", batch, seq,
				ws.InstanceType()))
	}
	return p.largerGPU(ctx, ws, m, user, prev, f, pin(batch, seq), off, factor, changes)
}

// largerGPU re-plans on the cheapest SKU with larger GPUs that fits the run (its estimate scaled by
// how far off the failed run showed it to be) and has quota; else it says why none does.
func (p *Planner) largerGPU(ctx context.Context, ws *kaito.Workspace, m *Model, user TrainingConfig, prev *events.Plan, f *events.TrainerFailure,
	o Overrides, off string, factor float64, changes []string) (*events.Plan, []string, error) {
	usages, err := p.usages(ctx)
	if err != nil {
		return nil, nil, err
	}
	var short []string
	for _, sku := range p.Catalog.SKUsByPrice() {
		if sku.MemoryGiB <= prev.GPUMemoryGiB {
			continue
		}
		tp, err := p.Catalog.PlanTuningFor(m, ws.Tuning.Method, sku.Name, o)
		if err != nil || tp.Estimate.PerGPUGiB*factor > sku.MemoryGiB*headroom {
			continue
		}
		if why := usages.Short(sku, ws.NodeCount()); why != "" {
			short = append(short, why)
			continue
		}
		plan, err := p.tuningPlan(ws, m, user, p.Catalog, sku.Name, o, prev.GradientAccumulation)
		return plan, append(changes, fmt.Sprintf("instance type %s → %s (%.0f GiB GPUs, ~$%.2f/h): new capacity", prev.InstanceType, sku.Name,
			sku.MemoryGiB, sku.PricePerHour)), err
	}
	why := fmt.Sprintf("no SKU with GPUs larger than %s's %.0f GiB fits it", prev.InstanceType, prev.GPUMemoryGiB)
	if len(short) > 0 {
		why += " with quota: " + strings.Join(short, "; ")
	}
	return nil, nil, p.oomAdvice(ws, prev, f, off, why)
}

// estimateOff says how far the plan's memory estimate was from what the failed run reached, and
// the factor to scale estimates by (at least 1): a run that ran out needed at least the GPU's
// memory, whatever its peak allocation shows.
func estimateOff(prev *events.Plan, f *events.TrainerFailure) (string, float64) {
	if f == nil || prev.EstimatedGiBPerGPU <= 0 {
		return "", 1
	}
	reached := float64(max(f.PeakGPUMemoryBytes, f.GPUMemoryBytes)) / gib
	if reached <= 0 {
		return "", 1
	}
	factor := max(reached/prev.EstimatedGiBPerGPU, 1)
	return fmt.Sprintf("the estimate was %.1f GiB per GPU; the run needed more than %.1f GiB (≥%.1f× the estimate)", prev.EstimatedGiBPerGPU, reached,
		factor), factor
}

// oomAdvice is the permanent failure of a run that ran out of GPU memory and that no retry may
// shrink further: what happened, why no retry, and what the user can change.
func (p *Planner) oomAdvice(ws *kaito.Workspace, prev *events.Plan, f *events.TrainerFailure, off, why string) error {
	var b strings.Builder
	if f != nil && f.Message != "" {
		b.WriteString(f.Message)
	} else {
		fmt.Fprintf(&b, "out of GPU memory with batch %d, sequence %d on %s", prev.BatchSize, prev.SeqLen, prev.InstanceType)
	}
	if off != "" {
		b.WriteString("; " + off)
	}
	b.WriteString("; not retried: " + why)
	b.WriteString("; to fit, lower per_device_train_batch_size (raising gradient_accumulation_steps keeps the effective batch), lower " +
		"max_seq_length, use qlora")
	if sku := p.largerSKU(prev); sku != "" {
		b.WriteString(", or set resource.instanceType to " + sku)
	}
	return events.Permanent(events.ReasonGPUOutOfMemory, fmt.Errorf("%s", b.String()))
}

// largerSKU is the cheapest SKU with larger GPUs than prev's, or "".
func (p *Planner) largerSKU(prev *events.Plan) string {
	for _, sku := range p.Catalog.SKUsByPrice() {
		if sku.MemoryGiB > prev.GPUMemoryGiB {
			return sku.Name
		}
	}
	return ""
}
