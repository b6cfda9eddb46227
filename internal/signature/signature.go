// Package signature signs and checks upload notifications: an HMAC-SHA256 over a timestamp and
// the body, so a captured notification cannot be replayed outside a window. The webhook checks
// it; senders (and the tests that play a storage system) make it. A leaf package, so both can.
package signature

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Header carries the signature.
const Header = "X-Kaitoflow-Signature"

// DefaultWindow is how far a notification's timestamp may be from the receiver's clock.
const DefaultWindow = 5 * time.Minute

// Sign returns the Header value for body sent at t: "t=UNIX,sha256=HEX", the HMAC-SHA256 under
// key of the decimal timestamp, a dot and the body.
func Sign(key []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",sha256=" + hex.EncodeToString(mac(key, ts, body))
}

func mac(key []byte, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Verify checks a Header value for body against key, and its timestamp against now within window.
func Verify(key []byte, header string, body []byte, now time.Time, window time.Duration) error {
	const want = "missing or wrong (want t=UNIX,sha256=HEX: HMAC-SHA256 of the timestamp, a dot and the body)"
	var ts, sig string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			ts = v
		case "sha256":
			sig = v
		}
	}
	got, err := hex.DecodeString(sig)
	if ts == "" || err != nil || !hmac.Equal(got, mac(key, ts, body)) {
		return errors.New(want)
	}
	unix, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return errors.New(want)
	}
	if d := now.Sub(time.Unix(unix, 0)).Abs(); d > window {
		return fmt.Errorf("signed %s from now, outside the %s replay window", d.Round(time.Second), window)
	}
	return nil
}
