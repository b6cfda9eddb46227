// Package natsconn is how every kaitoflow process connects to NATS: one URL (user and password may
// be in it), and optionally a credentials file (JWT + NKey), an NKey seed file, and TLS with a
// private CA and a client certificate, with the reconnect behaviour the runtime relies on.
package natsconn

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/nats-io/nats.go"
)

// Options are a NATS connection's settings.
type Options struct {
	URL string
	// Creds is a credentials file (a user JWT and its NKey seed), for decentralized auth.
	Creds string
	// NKey is a file holding an NKey seed (SU...), for NKey auth.
	NKey string
	// CA verifies the server's certificate; Cert and Key are the client's, for mutual TLS.
	CA, Cert, Key string
}

// Dial options for o, plus reconnect-forever: a process that loses NATS waits for it, and the
// runtime's publish-then-ack keeps what was in flight.
func (o Options) Dial(name string) ([]nats.Option, error) {
	opts := []nats.Option{nats.Name(name), nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true)}
	if o.Creds != "" {
		opts = append(opts, nats.UserCredentials(o.Creds))
	}
	if o.NKey != "" {
		opt, err := nats.NkeyOptionFromSeed(o.NKey)
		if err != nil {
			return nil, fmt.Errorf("NATS NKey seed %s: %w", o.NKey, err)
		}
		opts = append(opts, opt)
	}
	if o.CA != "" {
		opts = append(opts, nats.RootCAs(o.CA))
	}
	if o.Cert != "" || o.Key != "" {
		if o.Cert == "" || o.Key == "" {
			return nil, fmt.Errorf("NATS client TLS needs both a certificate and a key")
		}
		opts = append(opts, nats.ClientCert(o.Cert, o.Key))
	}
	return opts, nil
}

// Connect connects to o.URL.
func (o Options) Connect(name string) (*nats.Conn, error) {
	opts, err := o.Dial(name)
	if err != nil {
		return nil, err
	}
	nc, err := nats.Connect(o.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", Redacted(o.URL), err)
	}
	return nc, nil
}

// Redacted is a server list (comma-separated URLs) with credentials masked, for logs and errors:
// a password, and a token too (nats://TOKEN@host puts it where a user name goes, which
// url.URL.Redacted leaves as it is).
func Redacted(servers string) string {
	parts := strings.Split(servers, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			if _, hasPassword := u.User.Password(); hasPassword {
				parts[i] = u.Redacted()
			} else {
				u.User = url.User("xxxxx")
				parts[i] = u.String()
			}
		} else if err != nil {
			parts[i] = "(unparseable URL)"
		}
	}
	return strings.Join(parts, ",")
}
