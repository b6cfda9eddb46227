package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/internal/compose/ingress/webhook"
	"github.com/kaitoflow/kaitoflow/internal/httpserve"
)

// webhookFlags are the webhook's settings.
type webhookFlags struct {
	in                                       ingressFlags
	listen, template, container, issuer, aud string
	suffixes                                 []string
	maxBody                                  int64
	clients                                  []string
	insecure                                 bool
}

func newWebhook(g *globals) *cobra.Command {
	var o webhookFlags
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	cmd := &cobra.Command{
		Use:   "webhook",
		Short: "Start a workspace when a dataset is uploaded (Azure Event Grid BlobCreated, or a signed notification)",
		Long: `webhook serves POST /eventgrid for Azure Event Grid (Event Grid or CloudEvents 1.0 schema, single
or batched deliveries, and each schema's handshake) and POST /upload for a generic notification
{"url": ..., "sha256": ...} signed with HMAC-SHA256 over a timestamp and the body
(X-Kaitoflow-Signature: t=UNIX,sha256=HEX, within 5 minutes of the webhook's clock).

A Microsoft.Storage.BlobCreated (or Data Lake FlushWithClose) for a blob in --container whose name
ends in a --suffix becomes kaitoflow.workspace.requested from the --template manifest, with the
blob's URL as tuning.input.urls[0]. The workspace's name derives from the blob's path, its
generation from the blob's version: Event Grid's redeliveries start one workspace, a re-upload starts
the next generation. 200 comes only after JetStream stored the event; 503 when NATS is unavailable
(Event Grid retries); 4xx for bad or unauthenticated input.

Authentication (at least one, unless --insecure-no-auth): shared keys in $KAITOFLOW_WEBHOOK_KEYS
(comma-separated; sent as X-Kaitoflow-Key or ?code=), and/or an Entra ID bearer token
(--entra-issuer, --entra-audience, requested by an --entra-client). /upload needs $KAITOFLOW_WEBHOOK_SIGNING_KEY.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			h, err := o.handler(cmd.Context(), log)
			if err != nil {
				return err
			}
			sub, _, closeNATS, err := o.in.submitter(cmd.Context(), "webhook", "kaitoflow/webhook")
			if err != nil {
				return err
			}
			defer closeNATS()
			h.Submitter = sub
			log.Info("webhook listening", "addr", o.listen, "template", h.Template.Name, "container", o.container, "suffixes", o.suffixes,
				"keys", len(h.Keys), "entra", h.Verifier != nil, "upload_notifications", len(h.SigningKey) > 0)
			return httpserve.Serve(cmd.Context(), o.listen, h.Routes())
		},
	}
	f := cmd.Flags()
	o.in.register(cmd)
	f.StringVar(&o.listen, "listen", ":"+port, "HTTP address (Knative sets $PORT)")
	f.StringVar(&o.template, "template", "", "the Kaito Workspace manifest every upload instantiates (a mounted ConfigMap in a cluster)")
	f.StringVar(&o.container, "container", "", "only blobs in this container (default: any)")
	f.StringSliceVar(&o.suffixes, "suffix", []string{".parquet", ".jsonl", ".json", ".csv"}, "accepted blob name endings")
	f.StringVar(&o.issuer, "entra-issuer", "", "require Entra ID bearer tokens from this issuer, e.g. https://login.microsoftonline.com/TENANT/v2.0")
	f.StringVar(&o.aud, "entra-audience", "", "the tokens' audience: the application ID Event Grid's subscription uses")
	f.StringSliceVar(&o.clients, "entra-client", []string{webhook.EventGridAppID},
		"client applications (the token's azp or appid) allowed to deliver; the default is Azure Event Grid's")
	f.Int64Var(&o.maxBody, "max-body", 1<<20, "largest delivery accepted, in bytes")
	f.BoolVar(&o.insecure, "insecure-no-auth", false, "accept unauthenticated deliveries (tests only)")
	_ = cmd.MarkFlagRequired("template")
	return cmd
}

// handler is the webhook for the settings: its template, and who may call it.
func (o *webhookFlags) handler(ctx context.Context, log *slog.Logger) (*webhook.Handler, error) {
	doc, err := os.ReadFile(o.template)
	if err != nil {
		return nil, fmt.Errorf("--template: %w", err)
	}
	tmpl, err := kaito.DecodeWorkspace(doc)
	if err != nil {
		return nil, fmt.Errorf("--template %s: %w", o.template, err)
	}
	if err := o.in.admits(cmp.Or(tmpl.Namespace, kaito.DefaultNamespace)); err != nil {
		return nil, err
	}
	if tmpl.Tuning == nil {
		return nil, fmt.Errorf("--template %s: tuning: required (an upload becomes the tuning input)", o.template)
	}
	h := &webhook.Handler{Template: tmpl, Container: o.container, Suffixes: o.suffixes, MaxBody: o.maxBody, Log: log}
	for _, k := range strings.Split(os.Getenv("KAITOFLOW_WEBHOOK_KEYS"), ",") {
		if k = strings.TrimSpace(k); k != "" {
			h.Keys = append(h.Keys, k)
		}
	}
	if k := os.Getenv("KAITOFLOW_WEBHOOK_SIGNING_KEY"); k != "" {
		h.SigningKey = []byte(k)
	}
	if o.issuer != "" || o.aud != "" {
		if o.issuer == "" || o.aud == "" {
			return nil, errors.New("--entra-issuer and --entra-audience go together")
		}
		if h.Verifier, err = webhook.NewEntraVerifier(ctx, o.issuer, o.aud, o.clients); err != nil {
			return nil, err
		}
	}
	if len(h.Keys) == 0 && h.Verifier == nil && !o.insecure {
		return nil, errors.New("no authentication configured: set KAITOFLOW_WEBHOOK_KEYS or --entra-issuer/--entra-audience (or --insecure-no-auth for a test)")
	}
	return h, nil
}
