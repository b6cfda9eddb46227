// Command status is kaitoflow's status projector in an image of its own: every pipeline event in,
// the workspaces' records in the status store kept. `kaitoflow fn status` runs the same code.
package main

import (
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/compose/fnhost"
)

func main() { fnhost.Main(assembly.StatusPart()) }
