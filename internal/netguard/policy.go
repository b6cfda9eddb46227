package netguard

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// AddressPolicy decides which hosts a dataset or adapter URL may point at. The zero value refuses
// every loopback, link-local (the cloud metadata service lives at 169.254.169.254), private,
// unspecified and otherwise non-public address; Allow admits specific private hosts or networks
// (for example an in-cluster dataset server).
//
// The same policy runs twice: on literal IPs and "localhost" when a manifest is validated, and on
// the resolved address in every fetcher's dialer, so a name that resolves to an internal address
// (DNS rebinding) is refused at connect time.
type AddressPolicy struct {
	// Allow lists host names (exact, case-insensitive) and CIDR prefixes that are admitted even
	// though they are internal.
	Allow []string
	// Outputs, when set, says where each namespace's workspaces may push their adapters:
	// repository prefixes (registry/path) by namespace, "*" for every namespace. Without it a
	// workspace may name any repository its push secret reaches — one team's workspace could
	// overwrite another team's tags with a shared registry identity.
	Outputs map[string][]string
}

// CheckOutput checks that a workspace in namespace may push to image's repository.
func (p AddressPolicy) CheckOutput(namespace, image string) error {
	if len(p.Outputs) == 0 {
		return nil
	}
	repo := image
	if i := strings.Index(repo, "@"); i >= 0 {
		repo = repo[:i]
	}
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	allowed := append(slices.Clone(p.Outputs[namespace]), p.Outputs["*"]...)
	for _, prefix := range allowed {
		prefix = strings.TrimSuffix(prefix, "/")
		if strings.EqualFold(repo, prefix) || strings.HasPrefix(strings.ToLower(repo), strings.ToLower(prefix)+"/") {
			return nil
		}
	}
	if len(allowed) == 0 {
		return fmt.Errorf("namespace %s may push adapters to no repository (the functions' --output-repository)", namespace)
	}
	return fmt.Errorf("namespace %s may push adapters under %s only", namespace, strings.Join(allowed, ", "))
}

// ErrInternalAddress is returned for an address the policy refuses.
var ErrInternalAddress = errors.New("internal address")

// CheckHost checks a host name or literal IP as it appears in a URL, without resolving names.
func (p AddressPolicy) CheckHost(host string) error {
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	if h == "" {
		return errors.New("empty host")
	}
	for _, a := range p.Allow {
		if strings.EqualFold(a, h) {
			return nil
		}
	}
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return fmt.Errorf("%w: %s is loopback", ErrInternalAddress, host)
	}
	ip, err := netip.ParseAddr(strings.Trim(h, "[]"))
	if err != nil {
		// A name: whether it resolves is the dataset preflight's question, not validation's.
		return nil
	}
	return p.CheckAddr(ip)
}

// CheckAddr checks a resolved address.
func (p AddressPolicy) CheckAddr(ip netip.Addr) error {
	ip = ip.Unmap()
	for _, a := range p.Allow {
		if pfx, err := netip.ParsePrefix(a); err == nil && pfx.Contains(ip) {
			return nil
		}
		if addr, err := netip.ParseAddr(a); err == nil && addr == ip {
			return nil
		}
	}
	switch {
	case ip.IsLoopback():
		return fmt.Errorf("%w: %s is loopback", ErrInternalAddress, ip)
	case ip.IsLinkLocalUnicast(), ip.IsLinkLocalMulticast():
		return fmt.Errorf("%w: %s is link-local (cloud metadata)", ErrInternalAddress, ip)
	case ip.IsPrivate():
		return fmt.Errorf("%w: %s is private", ErrInternalAddress, ip)
	case ip.IsUnspecified():
		return fmt.Errorf("%w: %s is unspecified", ErrInternalAddress, ip)
	case ip.IsMulticast(), ip.IsInterfaceLocalMulticast():
		return fmt.Errorf("%w: %s is multicast", ErrInternalAddress, ip)
	case sharedAddressSpace.Contains(ip):
		return fmt.Errorf("%w: %s is carrier-grade NAT space", ErrInternalAddress, ip)
	}
	return nil
}

// 100.64.0.0/10 (RFC 6598) is where AKS and other clouds put internal services; netip does not
// count it as private.
var sharedAddressSpace = netip.MustParsePrefix("100.64.0.0/10")

// CheckURL checks that raw is an absolute http(s) URL whose host the policy admits.
func (p AddressPolicy) CheckURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("not a URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("scheme %q: only http and https are fetched", u.Scheme)
	}
	if u.Host == "" {
		return errors.New("no host")
	}
	if u.User != nil {
		return errors.New("credentials in the URL are not accepted; use a secret")
	}
	host := u.Hostname()
	if net.ParseIP(host) == nil && len(validation.IsDNS1123Subdomain(strings.ToLower(strings.TrimSuffix(host, ".")))) > 0 {
		return fmt.Errorf("host %q is not a valid DNS name", host)
	}
	return p.CheckHost(host)
}
