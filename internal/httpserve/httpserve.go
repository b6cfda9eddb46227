// Package httpserve serves HTTP until a context ends, then shuts down gracefully: requests in
// flight finish first, which is what Kubernetes' and Knative's SIGTERM expect. Every listener of
// kaitoflow's processes (the functions, chat-proxy, the webhook) serves this way.
package httpserve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// ShutdownGrace bounds how long requests in flight are given once ctx ends.
const ShutdownGrace = 30 * time.Second

// Serve serves h on addr until ctx ends, then shuts down within ShutdownGrace.
func Serve(ctx context.Context, addr string, h http.Handler) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
