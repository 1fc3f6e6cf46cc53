package activities

import "context"

// SetStall has a's builtin trainer call stall at each step and each
// evaluation progress report, so that a test can hang it there.
func SetStall(a *Activities, stall func(ctx context.Context, step int, evaluating bool)) {
	a.stall = stall
}
