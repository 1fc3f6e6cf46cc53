package cluster_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// cpuLimit caps each process (by pid) at cores of CPU time, as a
// container's CPU limit does: a cgroup of its own with a CFS quota, in the
// cgroup v2 hierarchy or v1's cpu controller, whichever the machine
// writes (it takes root). undo moves the processes back to the cgroups
// they were in and removes the new ones.
func cpuLimit(name string, pids []int, cores float64) (undo func() error, err error) {
	root, v2, err := cpuHierarchy()
	if err != nil {
		return nil, err
	}
	period := 100000
	// The kernel takes no quota under a millisecond.
	quota := strconv.Itoa(max(int(cores*float64(period)), 1000))
	var made, was []string
	undo = func() error {
		var errs []error
		for i, dir := range made {
			if raw, err := os.ReadFile(filepath.Join(dir, "cgroup.procs")); err == nil {
				for _, pid := range strings.Fields(string(raw)) {
					errs = append(errs, os.WriteFile(filepath.Join(was[i], "cgroup.procs"), []byte(pid), 0o644))
				}
			}
			errs = append(errs, os.Remove(dir))
		}
		return errors.Join(errs...)
	}
	for i, pid := range pids {
		from, err := cgroupOf(root, v2, pid)
		if err != nil {
			_ = undo()
			return nil, err
		}
		dir := filepath.Join(root, fmt.Sprintf("%s-%d", name, i))
		if err := os.Mkdir(dir, 0o755); err != nil {
			_ = undo()
			return nil, fmt.Errorf("make cgroup: %w", err)
		}
		made, was = append(made, dir), append(was, from)
		writes := [][2]string{{"cpu.cfs_period_us", strconv.Itoa(period)}, {"cpu.cfs_quota_us", quota}}
		if v2 {
			writes = [][2]string{{"cpu.max", quota + " " + strconv.Itoa(period)}}
		}
		writes = append(writes, [2]string{"cgroup.procs", strconv.Itoa(pid)})
		for _, w := range writes {
			if err := os.WriteFile(filepath.Join(dir, w[0]), []byte(w[1]), 0o644); err != nil {
				_ = undo()
				return nil, fmt.Errorf("cap process %d at %.2f cores: %w", pid, cores, err)
			}
		}
	}
	return undo, nil
}

// cpuHierarchy finds where CPU quotas are written: the cgroup v2 root when
// it offers the cpu controller to its children, else cgroup v1's cpu
// controller.
func cpuHierarchy() (root string, v2 bool, err error) {
	if ctl, err := os.ReadFile("/sys/fs/cgroup/cgroup.subtree_control"); err == nil && slices.Contains(strings.Fields(string(ctl)), "cpu") {
		return "/sys/fs/cgroup", true, nil
	}
	if _, err := os.Stat("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"); err == nil {
		return "/sys/fs/cgroup/cpu", false, nil
	}
	return "", false, errors.New("no cgroup hierarchy with the cpu controller to write")
}

// cgroupOf is the directory of pid's cgroup in the hierarchy at root
// (/proc/<pid>/cgroup: "0::<path>" in v2, "<n>:...cpu...:<path>" in v1).
func cgroupOf(root string, v2 bool, pid int) (string, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if (v2 && parts[0] == "0") || (!v2 && slices.Contains(strings.Split(parts[1], ","), "cpu")) {
			return filepath.Join(root, parts[2]), nil
		}
	}
	return "", fmt.Errorf("process %d is in no cgroup of %s", pid, root)
}
