package main

import (
	"bytes"
	"net/url"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/kaitoflow/kaitoflow/internal/compose/pipeline"
	"github.com/kaitoflow/kaitoflow/internal/golden"
	"github.com/kaitoflow/kaitoflow/internal/natsauth"
)

// nats-auth gives every role its own URL and password, the servers the same passwords by
// environment, and the authorization block (golden: a permission change shows in review).
func TestNATSAuthMakesOneUserPerRole(t *testing.T) {
	var conf bytes.Buffer
	if err := runNATSAuth(&conf, natsAuthFlags{configOnly: true}); err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "nats-users.conf", conf.Bytes())

	var out bytes.Buffer
	f := natsAuthFlags{server: "nats://nats.nats.svc.cluster.local:4222", namespace: "kaitoflow", natsNamespace: "nats"}
	if err := runNATSAuth(&out, f); err != nil {
		t.Fatal(err)
	}
	docs := strings.Split(strings.TrimPrefix(out.String(), "---\n"), "---\n")
	if len(docs) != 3 {
		t.Fatalf("%d documents:\n%s", len(docs), out.String())
	}
	var urls, env corev1.Secret
	var cm corev1.ConfigMap
	for i, v := range []any{&urls, &env, &cm} {
		if err := yaml.UnmarshalStrict([]byte(docs[i]), v); err != nil {
			t.Fatalf("document %d: %v", i, err)
		}
	}
	if urls.Namespace != "kaitoflow" || env.Namespace != "nats" || cm.Data[natsUsersConf] != conf.String() {
		t.Fatalf("namespaces %s %s, or the ConfigMap's configuration differs", urls.Namespace, env.Namespace)
	}
	seen := map[string]bool{}
	for _, r := range pipeline.NATSRoles() {
		u, err := url.Parse(urls.StringData[r.Name])
		if err != nil || u.User.Username() != r.Name || u.Host != "nats.nats.svc.cluster.local:4222" {
			t.Fatalf("%s's URL: %v %v", r.Name, u, err)
		}
		pw, _ := u.User.Password()
		if len(pw) < 32 || env.StringData[natsauth.PasswordVar(r.Name)] != pw || seen[pw] {
			t.Errorf("%s's password is short, not the server's, or shared", r.Name)
		}
		seen[pw] = true
	}
	if err := runNATSAuth(&out, natsAuthFlags{server: "nats://u:p@h:4222"}); err == nil {
		t.Error("a server URL with credentials was taken")
	}
}
