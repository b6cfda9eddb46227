package serve

import (
	"cmp"

	"github.com/kaitoflow/kaitoflow/events"
)

// Member is what a service records of a workspace it serves: the generation deployed and, when
// its adapters are an earlier generation's (a rollback, or a generation the promotion policy
// held), that generation.
type Member struct {
	Generation, Serving int64
	// Canary is the generation whose canary answers beside it, 0 when none does: selecting the
	// serving generation again ends it, so is not a redelivery.
	Canary int64
	// Checkpoint is the step of the serving generation's checkpoint it serves (0: the final
	// adapter): selecting another of the same generation is not a redelivery either.
	Checkpoint int
}

// ServingGeneration is the generation whose adapters the member serves.
func (m Member) ServingGeneration() int64 { return cmp.Or(m.Serving, m.Generation) }

// Service is what a deployer knows of the service a deployment goes to, for AdmitService.
type Service struct {
	// Exists: the service is there; Ours: it is the one d's pool (or, without a pool, d's
	// workspace) is served by, not another's of the same name.
	Exists, Ours bool
	// Member is d's workspace's record in it, nil when it serves none of that workspace.
	Member *Member
	// Runs and Wants describe the pods the service runs and those d would run (a deployer's own
	// digest of the template); for a pool they must agree. Empty: not known yet.
	Runs, Wants string
}

// AdmitService decides whether deployment d may be applied to svc: false and no error when it
// asks for nothing new (a redelivery, or an older generation arriving late); an error, permanent,
// when it never can be. The deployers (the sim, Knative) ask it the same question, so they cannot
// disagree on a rule.
func AdmitService(d Deployment, svc Service) (bool, error) {
	if svc.Exists && !svc.Ours {
		if d.Pool != "" {
			return false, events.Permanentf(events.ReasonForeignObject, "service %s/%s exists and is not serving pool %s; name another pool",
				d.Ref.Namespace, d.Service, d.Pool)
		}
		return false, events.Permanentf(events.ReasonForeignObject,
			"service %s/%s exists and is a serving pool's; name the workspace's pool, or another workspace", d.Ref.Namespace, d.Service)
	}
	if d.Pool != "" {
		for _, a := range d.Adapters {
			if a.Volume != nil {
				return false, events.Permanentf(events.ReasonNotSupported,
					"adapter %s: a serving pool serves adapters from images only (a volume would be mounted into every member's pods)", a.Name)
			}
		}
	}
	if m := svc.Member; m != nil {
		switch {
		case d.Serving == 0 && m.Generation >= d.Ref.Generation,
			d.Serving != 0 && (m.Generation > d.Ref.Generation || m.Generation == d.Ref.Generation && m.ServingGeneration() == d.Serving && m.Canary == 0 &&
				m.Checkpoint == d.Checkpoint):
			return false, nil
		}
	}
	if d.Serving != 0 && (svc.Member == nil || !svc.Exists) {
		return false, events.Permanentf(events.ReasonNotSupported, "generation %d's adapter cannot be served: %s has no service running", d.Serving, d.Ref)
	}
	if d.Pool != "" && d.Serving == 0 && svc.Exists && svc.Runs != "" && svc.Wants != "" && svc.Runs != svc.Wants {
		return false, events.Permanentf(events.ReasonInvalidWorkspace,
			"serving pool %s runs another pod than %s would (the pool's %s, this workspace's %s): a pool's members serve the same preset with the "+
				"same plan, node labels, pull secrets and pool size",
			d.Pool, d.Ref.Name, svc.Runs, svc.Wants)
	}
	return true, nil
}
