// Package netguard gives fetchers (dataset preflight and downloads, registry pulls and pushes) an HTTP client that applies
// the address policy to the address actually dialed. Validation checks literal IPs and localhost;
// only the dialer sees what a name resolves to, so only the dialer can stop a name that resolves,
// or is rebound, to an internal address.
package netguard

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"
)

// Dialer returns a dialer that refuses connections to addresses the policy refuses.
func Dialer(p AddressPolicy) *net.Dialer {
	return &net.Dialer{
		Timeout:   10 * time.Second,
		KeepAlive: 30 * time.Second,
		// Control runs after resolution, on the address about to be connected.
		Control: func(network, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("netguard: %s: %w", address, err)
			}
			if err := p.CheckAddr(ap.Addr()); err != nil {
				return fmt.Errorf("netguard: refusing to connect (admit a private endpoint with --allow-host): %w", err)
			}
			return nil
		},
	}
}

// Client returns an HTTP client that dials through Dialer and checks every redirect's URL with
// the same policy before following it.
func Client(p AddressPolicy, timeout time.Duration) *http.Client {
	return &http.Client{
		Transport: Transport(p),
		Timeout:   timeout,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 10 {
				return errors.New("stopped after 10 redirects")
			}
			if err := p.CheckURL(req.URL.String()); err != nil {
				return fmt.Errorf("redirect to %s: %w", req.URL.Redacted(), err)
			}
			return nil
		},
	}
}

// Transport is an HTTP transport that dials through Dialer: what go-containerregistry's calls
// take (remote.WithTransport), so a registry, its token realm and any redirect it answers with
// are checked at connect time, whatever name they were reached by.
func Transport(p AddressPolicy) *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil // a proxy would dial on our behalf, past the guard
	tr.DialContext = Dialer(p).DialContext
	tr.ResponseHeaderTimeout = time.Minute
	return tr
}

// Refused reports whether err is the guard refusing an address.
func Refused(err error) bool { return errors.Is(err, ErrInternalAddress) }
