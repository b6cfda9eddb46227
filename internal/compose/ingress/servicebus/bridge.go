// Package servicebus is `kaitoflow bridge servicebus`: Kaito Workspace manifests (or CloudEvents
// carrying them) from an Azure Service Bus queue or topic subscription become
// kaitoflow.workspace.requested on JetStream. A message is completed only after JetStream has
// acknowledged its event; one that cannot be parsed or validated is dead-lettered naming the field;
// one that meets a transient failure is abandoned for Service Bus to redeliver.
package servicebus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/internal/compose/ingress"
	"github.com/kaitoflow/kaitoflow/internal/logctx"
)

// Receiver is the part of *azservicebus.Receiver the bridge uses, so tests can stand in for
// Service Bus (the SDK has no fake).
type Receiver interface {
	ReceiveMessages(ctx context.Context, maxMessages int, options *azservicebus.ReceiveMessagesOptions) ([]*azservicebus.ReceivedMessage, error)
	CompleteMessage(ctx context.Context, m *azservicebus.ReceivedMessage, options *azservicebus.CompleteMessageOptions) error
	AbandonMessage(ctx context.Context, m *azservicebus.ReceivedMessage, options *azservicebus.AbandonMessageOptions) error
	DeadLetterMessage(ctx context.Context, m *azservicebus.ReceivedMessage, options *azservicebus.DeadLetterOptions) error
	RenewMessageLock(ctx context.Context, m *azservicebus.ReceivedMessage, options *azservicebus.RenewMessageLockOptions) error
}

// Submitter is what the bridge hands workspaces to (*ingress.Submitter).
type Submitter interface {
	Submit(ctx context.Context, ws *kaito.Workspace, origin string) (*ingress.Result, error)
}

// Dead-letter reasons.
const (
	ReasonUnparseable = "UnparseableMessage"
	ReasonInvalid     = "InvalidWorkspace"
)

// Bridge moves messages from Service Bus to the pipeline.
type Bridge struct {
	// Receivers receive concurrently, one goroutine each (an azservicebus.Receiver is not meant
	// for concurrent ReceiveMessages calls).
	Receivers []Receiver
	Submitter Submitter
	// Entity names the queue or topic/subscription, for origin ids and logs.
	Entity string
	// Hold is how long a message whose publish fails is kept (its lock renewed) while the publish
	// is retried, before it is abandoned to Service Bus: short outages of NATS then cost no
	// delivery attempts. Default 30s.
	Hold time.Duration
	// Batch is how many messages one receive call asks for. Default 8.
	Batch int
	Log   *slog.Logger
}

// Run receives until ctx ends. Messages in flight when it ends are abandoned, not lost.
func (b *Bridge) Run(ctx context.Context) error {
	if len(b.Receivers) == 0 {
		return errors.New("servicebus bridge: no receivers")
	}
	var wg sync.WaitGroup
	errc := make(chan error, len(b.Receivers))
	for i, r := range b.Receivers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := b.receive(ctx, r); err != nil {
				errc <- fmt.Errorf("receiver %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errc)
	return errors.Join(func() (errs []error) {
		for err := range errc {
			errs = append(errs, err)
		}
		return
	}()...)
}

func (b *Bridge) receive(ctx context.Context, r Receiver) error {
	batch := b.Batch
	if batch <= 0 {
		batch = 8
	}
	// After a failed receive or an abandoned message, wait before asking again: a broken
	// dependency must not turn into a redelivery storm that uses up MaxDeliveryCount.
	backoff := wait.Backoff{Duration: 200 * time.Millisecond, Factor: 2, Jitter: 0.2, Steps: 8, Cap: 30 * time.Second}
	pause := time.Duration(0)
	for ctx.Err() == nil {
		if pause > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(pause):
			}
		}
		msgs, err := r.ReceiveMessages(ctx, batch, nil)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var sbErr *azservicebus.Error
			if errors.As(err, &sbErr) && (sbErr.Code == azservicebus.CodeUnauthorizedAccess || sbErr.Code == azservicebus.CodeNotFound) {
				return fmt.Errorf("receive from %s: %w", b.Entity, err)
			}
			pause = backoff.Step()
			logctx.Or(b.Log).Warn("receive failed; retrying", "entity", b.Entity, "err", err, "retry_in", pause)
			continue
		}
		ok := true
		for _, m := range msgs {
			ok = b.handle(ctx, r, m) && ok
		}
		if ok {
			backoff = wait.Backoff{Duration: 200 * time.Millisecond, Factor: 2, Jitter: 0.2, Steps: 8, Cap: 30 * time.Second}
			pause = 0
		} else {
			pause = backoff.Step()
		}
	}
	return nil
}

// handle settles one message; it reports false when the message was abandoned.
func (b *Bridge) handle(ctx context.Context, r Receiver, m *azservicebus.ReceivedMessage) bool {
	log := logctx.Or(b.Log).With("entity", b.Entity, "message_id", m.MessageID, "delivery_count", m.DeliveryCount)
	var contentType string
	if m.ContentType != nil {
		contentType = *m.ContentType
	}
	ws, ceID, err := ingress.ParseMessage(m.Body, contentType, m.ApplicationProperties)
	if err != nil {
		b.deadLetter(ctx, r, m, ReasonUnparseable, err, log)
		return true
	}
	origin := b.Entity + "/" + m.MessageID
	if m.MessageID == "" && ceID != "" {
		origin = b.Entity + "/ce/" + ceID
	}

	// Keep the lock while the submission runs: a slow publish must not let the lock lapse and
	// the message go to another receiver meanwhile.
	hctx, stop := context.WithCancel(ctx)
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		b.keepLock(hctx, r, m, log)
	}()
	res, err := b.submit(hctx, ws, origin, log)
	stop()
	<-renewed

	var invalid *ingress.InvalidError
	switch {
	case errors.As(err, &invalid):
		b.deadLetter(ctx, r, m, ReasonInvalid, invalid, log)
		return true
	case err != nil:
		// Transient (NATS unavailable, or shutting down): give it back; Service Bus redelivers it
		// and dead-letters it after MaxDeliveryCount.
		log.Warn("submission failed; abandoning the message for redelivery", "err", err)
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if aerr := r.AbandonMessage(actx, m, nil); aerr != nil {
			log.Warn("abandon failed; the lock's expiry redelivers the message", "err", aerr)
		}
		return false
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := r.CompleteMessage(cctx, m, nil); err != nil {
		// The event is stored; a redelivery publishes the same id, which JetStream drops.
		log.Warn("complete failed after the event was stored; a redelivery will be deduplicated", "err", err)
		return true
	}
	log.Info("workspace submitted from Service Bus", "workspace", res.Event.Subject(), "generation", res.Workspace.Generation, "event_id",
		res.Event.ID(), "unchanged", !res.Fresh)
	return true
}

// submit retries transient failures for up to Hold, so a short NATS outage costs no delivery.
func (b *Bridge) submit(ctx context.Context, ws *kaito.Workspace, origin string, log *slog.Logger) (*ingress.Result, error) {
	hold := b.Hold
	if hold <= 0 {
		hold = 30 * time.Second
	}
	deadline := time.Now().Add(hold)
	backoff := wait.Backoff{Duration: 100 * time.Millisecond, Factor: 2, Jitter: 0.2, Steps: 10, Cap: 5 * time.Second}
	for {
		// Each attempt gets a copy: Submit fills in top-level defaults and the generation.
		attempt := *ws
		res, err := b.Submitter.Submit(ctx, &attempt, origin)
		var invalid *ingress.InvalidError
		if err == nil || errors.As(err, &invalid) || ctx.Err() != nil {
			return res, err
		}
		wait := backoff.Step()
		if time.Now().Add(wait).After(deadline) {
			return nil, err
		}
		log.Info("submission failed; retrying while holding the message", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(wait):
		}
	}
}

// keepLock renews m's lock at half its remaining time until ctx ends.
func (b *Bridge) keepLock(ctx context.Context, r Receiver, m *azservicebus.ReceivedMessage, log *slog.Logger) {
	for {
		every := 10 * time.Second
		if m.LockedUntil != nil {
			every = max(time.Until(*m.LockedUntil)/2, 50*time.Millisecond)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
		if err := r.RenewMessageLock(ctx, m, nil); err != nil && ctx.Err() == nil {
			log.Warn("lock renewal failed", "err", err)
		}
	}
}

func (b *Bridge) deadLetter(ctx context.Context, r Receiver, m *azservicebus.ReceivedMessage, reason string, cause error, log *slog.Logger) {
	desc := cause.Error()
	if len(desc) > 4096 {
		desc = desc[:4096]
	}
	log.Warn("dead-lettering message", "reason", reason, "description", desc)
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := r.DeadLetterMessage(dctx, m, &azservicebus.DeadLetterOptions{Reason: &reason, ErrorDescription: &desc}); err != nil {
		log.Warn("dead-letter failed; the message will be redelivered and judged again", "err", err)
	}
}
