// Command publish is kaitoflow's publish function in an image of its own: tuning.completed in,
// the adapter pushed to the workspace's registry as an OCI image, image.pushed out. `kaitoflow fn
// publish` runs the same code.
package main

import (
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly/publishpart"
	"github.com/kaitoflow/kaitoflow/internal/compose/fnhost"
)

func main() { fnhost.Main(publishpart.Part()) }
