package server

import (
	"fmt"
	"strconv"
	"strings"
)

// fineTunedName is the name of a model a job trained, as OpenAI names
// them: ft:<baseModel>:<jobId> for the job's final adapter (ft:<jobId> is
// read too), ft:<baseModel>:<jobId>:ckpt-step-<n> for one of its
// checkpoints. Names are built and read here only.
type fineTunedName struct {
	Base  string // "" when the name leaves it out
	JobID string
	// Checkpoint is set for a checkpoint's name, the one at Step.
	Checkpoint bool
	Step       int32
}

func (n fineTunedName) String() string {
	s := "ft:"
	if n.Base != "" {
		s += n.Base + ":"
	}
	s += n.JobID
	if n.Checkpoint {
		s += fmt.Sprintf(":ckpt-step-%d", n.Step)
	}
	return s
}

// checkpointName names job jobID's checkpoint at step, trained from base.
func checkpointName(base, jobID string, step int32) string {
	return fineTunedName{Base: base, JobID: jobID, Checkpoint: true, Step: step}.String()
}

// parseFineTunedName reads an ft: name; ok is false for any other name.
func parseFineTunedName(name string) (n fineTunedName, ok bool) {
	rest, found := strings.CutPrefix(name, "ft:")
	if !found {
		return n, false
	}
	parts := strings.Split(rest, ":")
	switch len(parts) {
	case 1:
		n.JobID = parts[0]
	case 2:
		n.Base, n.JobID = parts[0], parts[1]
	case 3:
		step, found := strings.CutPrefix(parts[2], "ckpt-step-")
		v, err := strconv.ParseInt(step, 10, 32)
		if !found || err != nil || v < 0 {
			return n, false
		}
		n.Base, n.JobID, n.Checkpoint, n.Step = parts[0], parts[1], true, int32(v)
	default:
		return n, false
	}
	return n, true
}
