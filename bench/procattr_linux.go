package bench

import "syscall"

// sysProcAttr makes a server process die with the load generator, so an
// interrupted benchmark leaves no server behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
