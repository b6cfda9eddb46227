// Command floor is the baseline of the function-start benchmark: the least a Go process serving
// /healthz over HTTP can do.
package main

import (
	"net/http"
	"os"
)

func main() {
	http.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	if err := http.ListenAndServe(os.Args[1], nil); err != nil {
		os.Exit(1)
	}
}
