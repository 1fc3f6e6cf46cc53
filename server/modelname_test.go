package server

import "testing"

// TestFineTunedNames: every name the platform gives reads back as itself,
// and names of other shapes are not taken for one.
func TestFineTunedNames(t *testing.T) {
	for _, n := range []fineTunedName{
		{Base: "llama-3.1-8b", JobID: "ftjob_a"},
		{JobID: "ftjob_a"},
		{Base: "llama-3.1-8b", JobID: "ftjob_a", Checkpoint: true, Step: 120},
	} {
		got, ok := parseFineTunedName(n.String())
		if !ok || got != n {
			t.Errorf("%s read back as %+v, %v", n, got, ok)
		}
	}
	for _, name := range []string{"llama-3.1-8b", "ft:a:b:c", "ft:a:b:ckpt-step-x", "ft:a:b:ckpt-step--1", "ft:a:b:c:d"} {
		if n, ok := parseFineTunedName(name); ok {
			t.Errorf("%q read as %+v", name, n)
		}
	}
}
