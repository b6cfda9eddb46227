package servicebus

import (
	"context"
	"crypto/rand"
	"errors"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
)

// queue is a Service Bus queue with peek-lock semantics, for tests: a received message is locked
// for LockDuration; an expired lock or an abandon makes it available again with DeliveryCount+1;
// settling with a lapsed lock fails with CodeLockLost; after MaxDeliveryCount deliveries it is
// dead-lettered by the queue itself.
type queue struct {
	LockDuration     time.Duration
	MaxDeliveryCount uint32

	mu         sync.Mutex
	cond       *sync.Cond
	msgs       []*entry
	deadLetter []*entry
	completed  map[string]time.Time // message id → when
}

type entry struct {
	msg            azservicebus.ReceivedMessage
	lock           [16]byte
	lockedUntil    time.Time
	done           bool
	reason, detail string
}

func newQueue(lock time.Duration, maxDelivery uint32) *queue {
	q := &queue{LockDuration: lock, MaxDeliveryCount: maxDelivery, completed: map[string]time.Time{}}
	q.cond = sync.NewCond(&q.mu)
	return q
}

func (q *queue) send(id string, body []byte, contentType string, props map[string]any) {
	q.mu.Lock()
	defer q.mu.Unlock()
	m := azservicebus.ReceivedMessage{MessageID: id, Body: body, ApplicationProperties: props}
	if contentType != "" {
		m.ContentType = &contentType
	}
	q.msgs = append(q.msgs, &entry{msg: m})
	q.cond.Broadcast()
}

// expire moves messages whose delivery attempts are used up to the dead-letter queue, as
// Service Bus does. Called with mu held.
func (q *queue) expire(now time.Time) {
	for _, e := range q.msgs {
		if !e.done && e.lockedUntil.Before(now) && q.MaxDeliveryCount > 0 && e.msg.DeliveryCount >= q.MaxDeliveryCount {
			e.done, e.reason = true, "MaxDeliveryCountExceeded"
			q.deadLetter = append(q.deadLetter, e)
		}
	}
}

func (q *queue) ReceiveMessages(ctx context.Context, max int, _ *azservicebus.ReceiveMessagesOptions) ([]*azservicebus.ReceivedMessage, error) {
	stop := context.AfterFunc(ctx, func() {
		q.mu.Lock()
		q.cond.Broadcast()
		q.mu.Unlock()
	})
	defer stop()
	q.mu.Lock()
	defer q.mu.Unlock()
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		now := time.Now()
		q.expire(now)
		var out []*azservicebus.ReceivedMessage
		for _, e := range q.msgs {
			if len(out) == max {
				break
			}
			if e.done || e.lockedUntil.After(now) {
				continue
			}
			e.msg.DeliveryCount++
			_, _ = rand.Read(e.lock[:])
			e.lockedUntil = now.Add(q.LockDuration)
			m := e.msg // each delivery is its own message value, as over AMQP
			m.LockToken = e.lock
			until := e.lockedUntil
			m.LockedUntil = &until
			out = append(out, &m)
		}
		if len(out) > 0 {
			return out, nil
		}
		// Wake up for new messages, and for locks that lapse.
		t := time.AfterFunc(q.LockDuration/4, func() {
			q.mu.Lock()
			q.cond.Broadcast()
			q.mu.Unlock()
		})
		q.cond.Wait()
		t.Stop()
	}
}

var errLockLost = &azservicebus.Error{Code: azservicebus.CodeLockLost}

// held returns m's entry if m's lock is still the current, unexpired one. Called with mu held.
func (q *queue) held(m *azservicebus.ReceivedMessage) (*entry, error) {
	for _, e := range q.msgs {
		if e.msg.MessageID == m.MessageID && !e.done {
			if e.lock != m.LockToken || time.Now().After(e.lockedUntil) {
				return nil, errLockLost
			}
			return e, nil
		}
	}
	return nil, errLockLost
}

func (q *queue) CompleteMessage(_ context.Context, m *azservicebus.ReceivedMessage, _ *azservicebus.CompleteMessageOptions) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	e, err := q.held(m)
	if err != nil {
		return err
	}
	e.done = true
	q.completed[m.MessageID] = time.Now()
	return nil
}

func (q *queue) AbandonMessage(_ context.Context, m *azservicebus.ReceivedMessage, _ *azservicebus.AbandonMessageOptions) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	e, err := q.held(m)
	if err != nil {
		return err
	}
	e.lockedUntil = time.Time{}
	q.expire(time.Now())
	q.cond.Broadcast()
	return nil
}

func (q *queue) DeadLetterMessage(_ context.Context, m *azservicebus.ReceivedMessage, o *azservicebus.DeadLetterOptions) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	e, err := q.held(m)
	if err != nil {
		return err
	}
	e.done = true
	if o != nil && o.Reason != nil {
		e.reason = *o.Reason
	}
	if o != nil && o.ErrorDescription != nil {
		e.detail = *o.ErrorDescription
	}
	q.deadLetter = append(q.deadLetter, e)
	return nil
}

func (q *queue) RenewMessageLock(_ context.Context, m *azservicebus.ReceivedMessage, _ *azservicebus.RenewMessageLockOptions) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	e, err := q.held(m)
	if err != nil {
		return err
	}
	e.lockedUntil = time.Now().Add(q.LockDuration)
	until := e.lockedUntil
	m.LockedUntil = &until
	return nil
}

// settled reports whether every message is completed or dead-lettered.
func (q *queue) settled() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.expire(time.Now())
	for _, e := range q.msgs {
		if !e.done {
			return false
		}
	}
	return true
}

func (q *queue) isLockLost(err error) bool {
	var e *azservicebus.Error
	return errors.As(err, &e) && e.Code == azservicebus.CodeLockLost
}
