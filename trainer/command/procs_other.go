//go:build !linux

package command

import (
	"syscall"
	"time"
)

// sysProcAttr puts the trainer in a process group of its own. Outside
// Linux there is no parent-death signal: a killed worker's trainer lives on
// until Sweep finds it.
func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

// waitGroupGone waits until process group pgid is empty, or d has passed.
func waitGroupGone(pgid int, d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) && syscall.Kill(-pgid, 0) == nil {
		time.Sleep(10 * time.Millisecond)
	}
}

// Sweep finds nothing outside Linux, where no /proc lists environments.
func Sweep(root string) (int, error) { return 0, nil }
