package cluster_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// cpuLimit caps each process (by pid) at cores of CPU time, as a
// container's CPU limit does: a cgroup of its own with a CFS quota, in the
// cgroup v2 hierarchy or v1's cpu controller, whichever the machine
// writes (it takes root). undo moves the processes back and removes the
// cgroups.
func cpuLimit(name string, pids []int, cores float64) (undo func(), err error) {
	root, v2, err := cpuHierarchy()
	if err != nil {
		return nil, err
	}
	period := 100000
	quota := strconv.Itoa(int(cores * float64(period)))
	var made []string
	undo = func() {
		for _, dir := range made {
			// A cgroup is removed once empty: its processes go back to the root.
			if raw, err := os.ReadFile(filepath.Join(dir, "cgroup.procs")); err == nil {
				for _, pid := range strings.Fields(string(raw)) {
					_ = os.WriteFile(filepath.Join(root, "cgroup.procs"), []byte(pid), 0o644)
				}
			}
			_ = os.Remove(dir)
		}
	}
	for i, pid := range pids {
		dir := filepath.Join(root, fmt.Sprintf("%s-%d", name, i))
		if err := os.Mkdir(dir, 0o755); err != nil {
			undo()
			return nil, fmt.Errorf("make cgroup: %w", err)
		}
		made = append(made, dir)
		writes := [][2]string{{"cpu.cfs_period_us", strconv.Itoa(period)}, {"cpu.cfs_quota_us", quota}}
		if v2 {
			writes = [][2]string{{"cpu.max", quota + " " + strconv.Itoa(period)}}
		}
		writes = append(writes, [2]string{"cgroup.procs", strconv.Itoa(pid)})
		for _, w := range writes {
			if err := os.WriteFile(filepath.Join(dir, w[0]), []byte(w[1]), 0o644); err != nil {
				undo()
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
	if ctl, err := os.ReadFile("/sys/fs/cgroup/cgroup.subtree_control"); err == nil && strings.Contains(string(ctl), "cpu") {
		return "/sys/fs/cgroup", true, nil
	}
	if _, err := os.Stat("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"); err == nil {
		return "/sys/fs/cgroup/cpu", false, nil
	}
	return "", false, errors.New("no cgroup hierarchy with the cpu controller to write")
}
