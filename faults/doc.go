// Package faults holds kaitoflow's fault suite (go test -tags faults ./faults): workspaces through
// the whole pipeline while its process is killed with SIGKILL, its NATS server restarted, every
// event delivered twice and every workspace submitted twice, with side effects counted where they
// happen. The package has no code of its own.
package faults
