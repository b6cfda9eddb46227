// Command serve is kaitoflow's serve function in an image of its own: image.pushed in, the
// adapter served by a scale-to-zero Knative Service (or the sim or local deployer),
// inference.ready out. `kaitoflow fn serve` runs the same code.
package main

import (
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly/servepart"
	"github.com/kaitoflow/kaitoflow/internal/compose/fnhost"
)

func main() { fnhost.Main(servepart.Part()) }
