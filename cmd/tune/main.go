// Command tune is kaitoflow's tune function in an image of its own: node.ready in, a tuning run
// (a Kubernetes Job, or the sim or local trainer) started and watched, tuning.completed out.
// `kaitoflow fn tune` runs the same code.
package main

import (
	tunesim "github.com/kaitoflow/kaitoflow/functions/tune/sim"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly/tunepart"
	"github.com/kaitoflow/kaitoflow/internal/compose/fnhost"
)

func main() {
	// The sim trainer's run is this binary re-executed; in that process it takes over here.
	tunesim.TrainerMain()
	fnhost.Main(tunepart.Part())
}
