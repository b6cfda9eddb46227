// Command signals is kaitoflow's signals function in an image of its own: Knative's
// ApiServerSources and PingSource in, kaitoflow's node, job, service and tick signals out.
// `kaitoflow fn signals` runs the same code.
package main

import (
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/compose/fnhost"
)

func main() { fnhost.Main(assembly.SignalsPart()) }
