package natsconn

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

func start(t *testing.T, o *server.Options) *server.Server {
	t.Helper()
	o.Host, o.Port, o.NoSigs, o.NoLog = "127.0.0.1", -1, true, true
	ns, err := server.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	return ns
}

// A server that requires a password, an NKey or mutual TLS admits kaitoflow with them and refuses
// it without.
func TestAuthenticatedConnections(t *testing.T) {
	dir := t.TempDir()

	// user and password, in the URL.
	pw := start(t, &server.Options{Username: "kaitoflow", Password: "s3cret-nats-pw"})
	addr := pw.Addr().String()
	if nc, err := (Options{URL: "nats://kaitoflow:s3cret-nats-pw@" + addr}).Connect("t"); err != nil {
		t.Errorf("password: %v", err)
	} else {
		nc.Close()
	}
	bad := Options{URL: "nats://kaitoflow:wrong@" + addr}
	if nc, err := bad.dialOnce(); err == nil {
		nc.Close()
		t.Error("a wrong password was admitted")
	}
	for _, u := range []string{"nats://kaitoflow:s3cret-nats-pw@" + addr, "nats://s3cret-nats-token@" + addr, "nats://a:1, nats://s3cret-nats-token@" + addr} {
		if got := Redacted(u); strings.Contains(got, "s3cret") || !strings.Contains(got, addr) {
			t.Errorf("Redacted(%q) = %s", u, got)
		}
	}

	// NKey.
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	seedFile := filepath.Join(dir, "user.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	nk := start(t, &server.Options{Nkeys: []*server.NkeyUser{{Nkey: pub}}})
	if nc, err := (Options{URL: nk.ClientURL(), NKey: seedFile}).Connect("t"); err != nil {
		t.Errorf("nkey: %v", err)
	} else {
		nc.Close()
	}
	if nc, err := (Options{URL: nk.ClientURL()}).dialOnce(); err == nil {
		nc.Close()
		t.Error("no NKey was admitted")
	}

	// Mutual TLS with a private CA.
	ca, caKey := certificate(t, nil, nil, "kaitoflow test CA", true)
	srvCert, srvKey := certificate(t, ca, caKey, "127.0.0.1", false)
	cliCert, cliKey := certificate(t, ca, caKey, "kaitoflow-fn", false)
	caFile := writePEM(t, dir, "ca.pem", "CERTIFICATE", ca.Raw)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	srvPair := tls.Certificate{Certificate: [][]byte{srvCert.Raw}, PrivateKey: srvKey}
	ts := start(t, &server.Options{TLS: true, TLSVerify: true, TLSConfig: &tls.Config{Certificates: []tls.Certificate{srvPair}, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}})
	keyDER, _ := x509.MarshalECPrivateKey(cliKey)
	o := Options{URL: "tls://" + ts.Addr().String(), CA: caFile,
		Cert: writePEM(t, dir, "client.pem", "CERTIFICATE", cliCert.Raw), Key: writePEM(t, dir, "client-key.pem", "EC PRIVATE KEY", keyDER)}
	if nc, err := o.Connect("t"); err != nil {
		t.Errorf("mutual TLS: %v", err)
	} else {
		nc.Close()
	}
	o.Cert, o.Key = "", ""
	if nc, err := o.dialOnce(); err == nil {
		nc.Close()
		t.Error("a client without a certificate was admitted")
	}
	if _, err := (Options{URL: "x", Cert: "a"}).Dial("t"); err == nil {
		t.Error("a certificate without a key")
	}
}

func certificate(t *testing.T, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, cn string, isCA bool) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: isCA, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	if ip := net.ParseIP(cn); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	}
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent, parentKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// dialOnce connects without retrying, so a refused connection is an error at once (the processes use Connect).
func (o Options) dialOnce() (*nats.Conn, error) {
	opts, err := o.Dial("check")
	if err != nil {
		return nil, err
	}
	return nats.Connect(o.URL, append(opts, nats.RetryOnFailedConnect(false), nats.MaxReconnects(0))...)
}
