package controller

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"

	"github.com/kaitoflow/kaitoflow/internal/logctx"
)

// LeaseName is the Lease the Workspace controller's replicas elect their leader with.
const LeaseName = "kaitoflow-controller"

// Leader runs a singleton only while this process holds a Lease: the Workspace controller runs as
// several replicas (a rolling update runs old and new side by side) and exactly one reconciles.
type Leader struct {
	Client    kubernetes.Interface
	Namespace string
	Name      string
	// Identity names this replica in the Lease (its pod's name).
	Identity string
	// LeaseDuration is how long a stopped leader's Lease keeps others waiting; RenewDeadline
	// how long the leader tries to renew before it gives up; RetryPeriod how often candidates
	// try. Zero values are client-go's usual 15 s, 10 s and 2 s.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	Log                                       *slog.Logger
}

// ErrLeadershipLost is returned by Run when this replica stopped leading while ctx was alive: the
// process should exit, so that it restarts as a candidate with fresh state.
var ErrLeadershipLost = errors.New("lost the leader lease")

// Run waits to lead, then runs lead until ctx ends or leadership is lost. A replica that stops on
// purpose releases the Lease, so the next one takes over at once instead of after LeaseDuration.
func (l *Leader) Run(ctx context.Context, lead func(context.Context) error) error {
	name := l.Name
	if name == "" {
		name = LeaseName
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: l.Namespace, Name: name},
		Client:     l.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: l.Identity},
	}
	log := logctx.Or(l.Log).With("lease", l.Namespace+"/"+name, "identity", l.Identity)
	// The elector calls OnStartedLeading on a goroutine of its own and does not wait for it, and
	// it releases the Lease as soon as its context ends: so the election runs on a context of its
	// own, ended only after lead has returned (no two replicas ever reconcile at once), and lead
	// failing ends the election too.
	electing, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	started, done := make(chan struct{}), make(chan error, 1)
	go func() {
		select {
		case <-ctx.Done():
			select {
			case <-started: // lead sees ctx end, and stops the election when it returns
			default:
				stop() // not leading: stop campaigning
			}
		case <-electing.Done():
		}
	}()
	elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   cmp.Or(l.LeaseDuration, 15*time.Second),
		RenewDeadline:   cmp.Or(l.RenewDeadline, 10*time.Second),
		RetryPeriod:     cmp.Or(l.RetryPeriod, 2*time.Second),
		ReleaseOnCancel: true,
		Name:            name,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: leadUntil(ctx, lead, started, done, stop, log),
			OnStoppedLeading: func() { log.Info("stopped leading") },
			OnNewLeader: func(id string) {
				if id != l.Identity {
					log.Info("following", "leader", id)
				}
			},
		},
	})
	if err != nil {
		return fmt.Errorf("leader election: %w", err)
	}
	elector.Run(electing) // returns when ctx ends, the lease is lost, or lead returned
	select {
	case <-started:
	default:
		return nil // ctx ended before this replica led
	}
	runErr := <-done
	switch {
	case ctx.Err() != nil:
		return nil
	case runErr != nil && !errors.Is(runErr, context.Canceled):
		return runErr
	}
	return ErrLeadershipLost
}

// leadUntil is the elector's OnStartedLeading: it says it started, runs lead until this replica
// stops (ctx) or loses the Lease (leading), hands lead's error to done and ends the election.
func leadUntil(ctx context.Context, lead func(context.Context) error, started chan<- struct{}, done chan<- error, stop func(),
	log *slog.Logger) func(context.Context) {
	return func(leading context.Context) {
		close(started)
		log.InfoContext(leading, "leading")
		leadCtx, cancel := context.WithCancel(leading)
		defer cancel()
		go func() {
			select {
			case <-ctx.Done():
				cancel()
			case <-leadCtx.Done():
			}
		}()
		err := lead(leadCtx)
		done <- err
		stop()
	}
}

// NewRecorder returns an EventRecorder that writes Kubernetes Events through client as the
// controller, and the function that stops it.
func NewRecorder(ctx context.Context, client kubernetes.Interface) (record.EventRecorder, func()) {
	// client-go's default spam filter lets 25 events an object through and then one every five
	// minutes; a workspace's pipeline has more steps than that over its generations.
	b := record.NewBroadcaster(record.WithContext(ctx), record.WithCorrelatorOptions(record.CorrelatorOptions{BurstSize: 1000, QPS: 1}))
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	return b.NewRecorder(runtime.NewScheme(), corev1.EventSource{Component: "kaitoflow-controller"}), b.Shutdown
}
