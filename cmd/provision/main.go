// Command provision is kaitoflow's provision function in an image of its own: a workspace's
// request in, its GPU capacity bought (or found) and node.ready out. It links provision's builder
// and its drivers, not the CLI (bench: FunctionStart); `kaitoflow fn provision` runs the same code.
package main

import (
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly/provisionpart"
	"github.com/kaitoflow/kaitoflow/internal/compose/fnhost"
)

func main() { fnhost.Main(provisionpart.Part()) }
