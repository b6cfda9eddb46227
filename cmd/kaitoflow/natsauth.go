package main

import (
	"fmt"
	"io"
	"net/url"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/kaitoflow/kaitoflow/internal/compose/pipeline"
	"github.com/kaitoflow/kaitoflow/internal/natsauth"
)

type natsAuthFlags struct {
	server, namespace, natsNamespace string
	configOnly                       bool
}

func newNATSAuth(_ *globals) *cobra.Command {
	var f natsAuthFlags
	cmd := &cobra.Command{
		Use:   "nats-auth",
		Short: "Make the NATS users a cluster's kaitoflow signs in with: one role per function, the entrances and the admin",
		Long: `nats-auth prints, for kubectl apply, what gives each kaitoflow workload its own NATS user: a
function may publish the pipeline's events but never a workspace request, and write only its own
key-value buckets; the entrances (controller, bridge, webhook) may publish requests; the admin may
do anything. Fresh passwords every run:

  - Secret kaitoflow-nats (in --namespace): each role's URL with its password; each workload
    reads its own key (deploy/knative);
  - Secret kaitoflow-nats-users (in --nats-namespace): the passwords as environment variables for
    the NATS servers;
  - ConfigMap kaitoflow-nats-users (in --nats-namespace): the nats-server authorization block to
    include in the servers' configuration (--config-only prints just that).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runNATSAuth(cmd.OutOrStdout(), f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.server, "server", "nats://nats.nats.svc.cluster.local:4222", "the NATS URL the workloads connect to")
	fl.StringVar(&f.namespace, "namespace", "kaitoflow", "kaitoflow's namespace")
	fl.StringVar(&f.natsNamespace, "nats-namespace", "nats", "the NATS servers' namespace")
	fl.BoolVar(&f.configOnly, "config-only", false, "print only the nats-server authorization block (passwords read from the environment)")
	return cmd
}

// natsUsersConf is the ConfigMap key (and file name) of the authorization block.
const natsUsersConf = "kaitoflow-users.conf"

func runNATSAuth(w io.Writer, f natsAuthFlags) error {
	roles := pipeline.NATSRoles()
	conf := natsauth.Config(roles)
	if f.configOnly {
		_, err := io.WriteString(w, conf)
		return err
	}
	server, err := url.Parse(f.server)
	if err != nil || server.Host == "" || server.User != nil {
		return fmt.Errorf("--server %q: want a NATS URL without credentials (nats://host:port)", f.server)
	}
	passwords, err := natsauth.Passwords(roles)
	if err != nil {
		return err
	}
	urls, env := map[string]string{}, map[string]string{}
	for _, r := range roles {
		u := *server
		u.User = url.UserPassword(r.Name, passwords[r.Name])
		urls[r.Name] = u.String()
		env[natsauth.PasswordVar(r.Name)] = passwords[r.Name]
	}
	meta := func(name, ns string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app.kubernetes.io/part-of": "kaitoflow"}}
	}
	objs := []any{
		corev1.Secret{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"}, ObjectMeta: meta("kaitoflow-nats", f.namespace), StringData: urls},
		corev1.Secret{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"}, ObjectMeta: meta("kaitoflow-nats-users", f.natsNamespace), StringData: env},
		corev1.ConfigMap{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"}, ObjectMeta: meta("kaitoflow-nats-users", f.natsNamespace),
			Data: map[string]string{natsUsersConf: conf}},
	}
	for _, o := range objs {
		b, err := yaml.Marshal(o)
		if err != nil {
			return fmt.Errorf("encode: %w", err)
		}
		if _, err := fmt.Fprintf(w, "---\n%s", b); err != nil {
			return err
		}
	}
	return nil
}
