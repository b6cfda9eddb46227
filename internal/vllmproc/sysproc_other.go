//go:build unix && !linux

package vllmproc

import "syscall"

// processGroup starts the server in a process group of its own (Stop and Kill signal the group:
// vLLM's engine processes too). Only Linux can have it killed with this process; elsewhere the
// local deployer's Close stops it.
func processGroup() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
