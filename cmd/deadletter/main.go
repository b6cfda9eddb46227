// Command deadletter is kaitoflow's dead-letter function in an image of its own: an event the
// Broker gave up on in, the workspace's workspace.failed out with the reason. `kaitoflow fn
// deadletter` runs the same code.
package main

import (
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/compose/fnhost"
)

func main() { fnhost.Main(assembly.DeadLetterPart()) }
