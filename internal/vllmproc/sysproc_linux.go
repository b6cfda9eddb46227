package vllmproc

import "syscall"

// processGroup starts the server in a process group of its own (Stop and Kill signal the group:
// vLLM's engine processes too), killed with this process should it die first.
func processGroup() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
