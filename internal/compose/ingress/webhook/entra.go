package webhook

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/coreos/go-oidc/v3/oidc"
)

// EventGridAppID is Azure Event Grid's own Entra application: the client a secured Event Grid
// webhook delivery's token is issued to.
const EventGridAppID = "4962773b-9cdb-44cf-a8bf-237846a00ab7"

// entra verifies Entra ID access tokens: signature against the issuer's published keys
// (discovered and cached by go-oidc), issuer, audience and expiry, and then who asked for the
// token. The audience only says the token is meant for this webhook; any application in the
// tenant allowed to request that audience gets one, so the client (v1 tokens' appid, v2's azp)
// must be one of the configured clients too.
type entra struct {
	v       *oidc.IDTokenVerifier
	clients []string
}

// NewEntraVerifier returns a verifier for tokens of issuer (for a tenant's v2 tokens,
// https://login.microsoftonline.com/TENANT/v2.0) minted for audience (the application ID that
// Event Grid's subscription names) and requested by one of clients (EventGridAppID for Event
// Grid's deliveries).
func NewEntraVerifier(ctx context.Context, issuer, audience string, clients []string) (TokenVerifier, error) {
	if len(clients) == 0 {
		return nil, errors.New("entra: at least one allowed client application id is required")
	}
	p, err := oidc.NewProvider(ctx, issuer)
	if err != nil {
		return nil, fmt.Errorf("discover the token issuer %s: %w", issuer, err)
	}
	return &entra{v: p.VerifierContext(ctx, &oidc.Config{ClientID: audience}), clients: clients}, nil
}

func (e *entra) Verify(ctx context.Context, raw string) error {
	tok, err := e.v.Verify(ctx, raw)
	if err != nil {
		return err
	}
	var c struct {
		AppID string `json:"appid"`
		AZP   string `json:"azp"`
	}
	if err := tok.Claims(&c); err != nil {
		return fmt.Errorf("token claims: %w", err)
	}
	client := c.AZP
	if client == "" {
		client = c.AppID
	}
	if !slices.Contains(e.clients, client) {
		return fmt.Errorf("token requested by client %q, not an allowed one", client)
	}
	return nil
}
