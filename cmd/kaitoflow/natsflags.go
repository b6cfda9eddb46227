package main

import (
	"log/slog"

	"github.com/spf13/pflag"

	"github.com/kaitoflow/kaitoflow/internal/natsconn"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
)

// natsFlags are how a command reaches NATS: the URL (user:password@ may be in it), and NKey or
// credentials-file auth and TLS, as a NATS cluster that requires them asks.
type natsFlags struct {
	natsconn.Options
	// replicas of the JetStream stream and buckets this process creates where they are missing.
	replicas int
}

func (n *natsFlags) register(fs *pflag.FlagSet, def, usage string) {
	fs.StringVar(&n.URL, "nats", def, usage)
	fs.StringVar(&n.Creds, "nats-creds", "", "NATS credentials file (a user JWT and its NKey seed)")
	fs.StringVar(&n.NKey, "nats-nkey", "", "file with the NKey seed to authenticate to NATS with")
	fs.StringVar(&n.CA, "nats-ca", "", "CA certificate(s) that sign the NATS server's certificate")
	fs.StringVar(&n.Cert, "nats-cert", "", "client certificate for NATS mutual TLS (with --nats-key)")
	fs.StringVar(&n.Key, "nats-key", "", "client key for NATS mutual TLS")
	fs.IntVar(&n.replicas, "replicas", 1,
		"replicas of the JetStream stream and key-value buckets, where this process creates them (3 on a NATS cluster); existing ones are never weakened")
}

// storage is how this process creates and checks kaitoflow's JetStream stream and buckets.
func (n *natsFlags) storage(log *slog.Logger) runtime.Storage {
	return runtime.Storage{Replicas: n.replicas, Log: log}
}
