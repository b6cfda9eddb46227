package natsauth

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

// The configuration a cluster's NATS servers load (Config) declares the same users, with the
// same rights, as the embedded server gets (Users): nats-server's own parser reads it back.
func TestConfigIsWhatTheServerEnforces(t *testing.T) {
	roles := []Role{
		{Name: Admin},
		{Name: "entrance", Publish: []string{"kaitoflow.workspace.requested"}, Stream: "KAITOFLOW", Opens: []string{"status"}},
		{Name: "tune-x", Publish: []string{"kaitoflow.>"}, Deny: []string{"kaitoflow.workspace.requested"}, Stream: "KAITOFLOW", Writes: []string{"runs"}},
	}
	passwords, err := Passwords(roles)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range roles {
		t.Setenv(PasswordVar(r.Name), passwords[r.Name])
	}
	file := filepath.Join(t.TempDir(), "users.conf")
	if err := os.WriteFile(file, []byte(Config(roles)), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(file)
	if err != nil {
		t.Fatalf("nats-server refuses the configuration: %v\n%s", err, Config(roles))
	}
	want, err := Users(roles, passwords)
	if err != nil {
		t.Fatal(err)
	}
	if len(opts.Users) != len(want) {
		t.Fatalf("%d users, want %d", len(opts.Users), len(want))
	}
	for i, u := range opts.Users {
		w := want[i]
		if u.Username != w.Username || u.Password != w.Password {
			t.Errorf("user %d: %s/%s, want %s/%s", i, u.Username, u.Password, w.Username, w.Password)
		}
		if !reflect.DeepEqual(u.Permissions, w.Permissions) {
			t.Errorf("%s: the server reads %+v, the role is %+v", w.Username, u.Permissions, w.Permissions)
		}
	}
	if _, err := Users(roles, map[string]string{Admin: "x"}); err == nil {
		t.Error("a role without a password was given a user")
	}
}
