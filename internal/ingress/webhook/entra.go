package webhook

import (
	"context"
	"fmt"

	"github.com/coreos/go-oidc/v3/oidc"
)

// entra verifies Entra ID access tokens: signature against the issuer's published keys
// (discovered and cached by go-oidc), issuer, audience and expiry.
type entra struct{ v *oidc.IDTokenVerifier }

// NewEntraVerifier returns a verifier for tokens of issuer (for a tenant's v2 tokens,
// https://login.microsoftonline.com/TENANT/v2.0) minted for audience (the application ID that
// Event Grid's subscription names).
func NewEntraVerifier(ctx context.Context, issuer, audience string) (TokenVerifier, error) {
	p, err := oidc.NewProvider(ctx, issuer)
	if err != nil {
		return nil, fmt.Errorf("discover the token issuer %s: %w", issuer, err)
	}
	return &entra{v: p.VerifierContext(ctx, &oidc.Config{ClientID: audience})}, nil
}

func (e *entra) Verify(ctx context.Context, raw string) error {
	_, err := e.v.Verify(ctx, raw)
	return err
}
