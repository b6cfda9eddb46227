package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/compose/fnhost"
	"github.com/kaitoflow/kaitoflow/internal/compose/ingress"
	"github.com/kaitoflow/kaitoflow/internal/compose/ingress/servicebus"
	"github.com/kaitoflow/kaitoflow/internal/natsconn"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
	"github.com/kaitoflow/kaitoflow/internal/status"
)

// ingressFlags are what the bridge and the webhook share: the bus and the address policy.
type ingressFlags struct {
	nats       fnhost.NATS
	allow      []string
	namespaces []string
}

func (f *ingressFlags) register(cmd *cobra.Command) {
	f.nats.Register(cmd.Flags(), "nats://127.0.0.1:4222", "NATS server with JetStream")
	cmd.Flags().StringSliceVar(&f.allow, "allow-host", nil, "private dataset hosts or CIDRs that workspaces may name (repeatable)")
	cmd.Flags().StringSliceVar(&f.namespaces, "workspace-namespace", nil,
		"a namespace workspaces from here may be submitted to (repeatable, required; * for any)")
}

// admits refuses a configuration without --workspace-namespace, and, given the namespace the
// entrance's workspaces go to (a template's; empty when each message names its own), one it
// could never submit to.
func (f *ingressFlags) admits(namespace string) error {
	if len(f.namespaces) == 0 {
		return errors.New("--workspace-namespace: say which namespaces workspaces from here may run in (repeatable; * for any)")
	}
	if namespace != "" && !ingress.Admits(f.namespaces, namespace) {
		return fmt.Errorf("--workspace-namespace %s does not admit namespace %s, where every workspace from here would go", strings.Join(f.namespaces,
			","), namespace)
	}
	return nil
}

// submitter connects to NATS and returns the submission path shared with the API, and the
// JetStream handle.
func (f *ingressFlags) submitter(ctx context.Context, name, source string) (*ingress.Submitter, jetstream.JetStream, func(), error) {
	nc, err := f.nats.Connect("kaitoflow-" + name)
	if err != nil {
		return nil, nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, nil, err
	}
	if _, err := f.nats.Storage(nil).EnsureStream(ctx, js); err != nil {
		nc.Close()
		return nil, nil, nil, err
	}
	store, err := status.Open(ctx, js, f.nats.Storage(nil))
	if err != nil {
		nc.Close()
		return nil, nil, nil, err
	}
	return &ingress.Submitter{Store: store, Publisher: runtime.JetStreamPublisher{JS: js}, Policy: netguard.AddressPolicy{Allow: f.allow},
			Source: source, Namespaces: f.namespaces},
		js, func() { _ = nc.Drain() }, nil
}

func newBridge(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "bridge", Short: "Bring workspaces in from a message broker"}
	cmd.AddCommand(newBridgeServiceBus(g))
	return cmd
}

// serviceBusFlags are the bridge's settings.
type serviceBusFlags struct {
	in                                                 ingressFlags
	namespace, queue, topic, subscription, statusTopic string
	receivers, batch                                   int
	hold                                               time.Duration
}

func newBridgeServiceBus(g *globals) *cobra.Command {
	var o serviceBusFlags
	cmd := &cobra.Command{
		Use:   "servicebus",
		Short: "Receive Kaito Workspace manifests (or CloudEvents) from an Azure Service Bus queue or subscription",
		Long: `servicebus receives from a queue (--queue) or a topic subscription (--topic, --subscription) in
peek-lock mode. A message's body is a Kaito Workspace manifest (YAML or JSON) or a CloudEvent of type
kaitoflow.workspace.requested (structured JSON, or the AMQP binding's binary mode with cloudEvents:
application properties). It is completed only after JetStream stored the workspace.requested event
(Nats-Msg-Id derived from the MessageId); a message that cannot be parsed or validated is
dead-lettered with DeadLetterReason and a DeadLetterErrorDescription naming the field; one whose
publish fails is held (lock renewed) for --hold, then abandoned so Service Bus redelivers it.

--status-topic also sends every status event to a topic (binary-mode CloudEvents; the role
"Azure Service Bus Data Sender" on it).

Authentication: --servicebus-namespace NAME.servicebus.windows.net with workload identity, managed identity or
any azidentity credential (the role "Azure Service Bus Data Receiver" on the entity), or a connection
string in $KAITOFLOW_SERVICEBUS_CONNECTION_STRING (never a flag, so it stays out of process lists).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			return o.run(cmd.Context(), log)
		},
	}
	f := cmd.Flags()
	o.in.register(cmd)
	f.StringVar(&o.namespace, "servicebus-namespace", "", "fully qualified Service Bus namespace, NAME.servicebus.windows.net")
	f.StringVar(&o.queue, "queue", "", "queue to receive from")
	f.StringVar(&o.topic, "topic", "", "topic to receive from (with --subscription)")
	f.StringVar(&o.subscription, "subscription", "", "the topic's subscription")
	f.IntVar(&o.receivers, "receivers", 4, "concurrent receivers")
	f.IntVar(&o.batch, "batch", 8, "messages per receive call")
	f.StringVar(&o.statusTopic, "status-topic", "",
		"also send every status event (CloudEvents, AMQP binary mode) to this topic, for consumers outside the cluster")
	f.DurationVar(&o.hold, "hold", 30*time.Second, "how long a message is held (lock renewed) while NATS is unavailable before it is abandoned")
	return cmd
}

func (o *serviceBusFlags) run(ctx context.Context, log *slog.Logger) error {
	if (o.queue == "") == (o.topic == "") || (o.topic != "") != (o.subscription != "") {
		return errors.New("give --queue, or --topic with --subscription")
	}
	if err := o.in.admits(""); err != nil {
		return err
	}
	client, err := o.client()
	if err != nil {
		return err
	}
	defer client.Close(context.WithoutCancel(ctx))
	entity := o.queue
	if o.topic != "" {
		entity = o.topic + "/subscriptions/" + o.subscription
	}
	opened, err := o.receiversOf(client, entity)
	rs := make([]servicebus.Receiver, len(opened))
	for i, r := range opened {
		defer r.Close(context.WithoutCancel(ctx))
		rs[i] = r
	}
	if err != nil {
		return err
	}
	sub, js, closeNATS, err := o.in.submitter(ctx, "bridge-servicebus", "kaitoflow/servicebus")
	if err != nil {
		return err
	}
	defer closeNATS()
	errc := make(chan error, 1)
	if o.statusTopic != "" {
		sender, err := client.NewSender(o.statusTopic, nil)
		if err != nil {
			return fmt.Errorf("sender for %s: %w", o.statusTopic, err)
		}
		defer sender.Close(context.WithoutCancel(ctx))
		fn := runtime.Function{Name: "servicebus-status", Types: events.Types, Handler: &servicebus.Exporter{Sender: sender}, Observer: true}
		r, err := runtime.NewJetStream(js, fn, runtime.Deps{Logger: log}, runtime.JetStreamOptions{MaxDeliver: 20})
		if err != nil {
			return err
		}
		go func() { errc <- r.Run(ctx) }()
		log.Info("exporting status events to Service Bus", "topic", o.statusTopic)
	}
	log.Info("bridging Service Bus to the pipeline", "entity", entity, "receivers", len(rs), "nats", natsconn.Redacted(o.in.nats.URL))
	b := &servicebus.Bridge{Receivers: rs, Submitter: sub, Entity: entity, Hold: o.hold, Batch: o.batch, Log: log}
	err = b.Run(ctx)
	if o.statusTopic != "" {
		err = errors.Join(err, <-errc)
	}
	return err
}

// client signs in to Service Bus with the connection string in the environment (never a flag, so
// it stays out of process lists) or Entra ID.
func (o *serviceBusFlags) client() (*azservicebus.Client, error) {
	var (
		client *azservicebus.Client
		err    error
	)
	switch conn := os.Getenv("KAITOFLOW_SERVICEBUS_CONNECTION_STRING"); {
	case conn != "":
		client, err = azservicebus.NewClientFromConnectionString(conn, nil)
	case o.namespace != "":
		cred, cerr := azidentity.NewDefaultAzureCredential(nil)
		if cerr != nil {
			return nil, fmt.Errorf("azure credential: %w", cerr)
		}
		client, err = azservicebus.NewClient(o.namespace, cred, nil)
	default:
		return nil, errors.New("give --servicebus-namespace (Entra ID) or set KAITOFLOW_SERVICEBUS_CONNECTION_STRING")
	}
	if err != nil {
		// The SDK's message can quote a malformed connection string; say which input failed.
		return nil, errors.New("service bus client: the namespace or connection string is not usable")
	}
	return client, nil
}

// receiversOf opens the peek-lock receivers on entity; those opened before a failure are
// returned with it, for the caller to close.
func (o *serviceBusFlags) receiversOf(client *azservicebus.Client, entity string) ([]*azservicebus.Receiver, error) {
	var rs []*azservicebus.Receiver
	opts := &azservicebus.ReceiverOptions{ReceiveMode: azservicebus.ReceiveModePeekLock}
	for range max(o.receivers, 1) {
		var (
			r   *azservicebus.Receiver
			err error
		)
		if o.queue != "" {
			r, err = client.NewReceiverForQueue(o.queue, opts)
		} else {
			r, err = client.NewReceiverForSubscription(o.topic, o.subscription, opts)
		}
		if err != nil {
			return rs, fmt.Errorf("receiver for %s: %w", entity, err)
		}
		rs = append(rs, r)
	}
	return rs, nil
}
