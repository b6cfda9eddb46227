// Package election names the Lease a controller's replicas elect their leader with. It is its own
// package so that what configures the controller (the assembly, the CLI) says how it is elected
// without linking the controller itself: a function's binary carries the assembly's
// configuration, not controller-runtime.
package election

import "time"

// Lease makes the controller reconcile only while this process holds a Lease: the controller
// runs as several replicas (a rolling update runs old and new side by side) and exactly one
// reconciles. A replica that stops on purpose releases the Lease, so the next one takes over at
// once instead of after LeaseDuration.
type Lease struct {
	Namespace string
	// Name is the Lease's; the controller's own (controller.LeaseName) when empty.
	Name string
	// Identity names this replica in the Lease (its pod's name).
	Identity string
	// LeaseDuration is how long a stopped leader's Lease keeps others waiting; RenewDeadline
	// how long the leader tries to renew before it gives up; RetryPeriod how often candidates
	// try. Zero values are client-go's usual 15 s, 10 s and 2 s.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}
