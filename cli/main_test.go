package cli_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/tuneforge/tuneforge/internal/testenv"
)

// env is the platform the CLI's tests call: a real API on PostgreSQL and
// an embedded Temporal server, with workers.
var env *testenv.Env

func TestMain(m *testing.M) {
	var err error
	if env, err = testenv.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "start test platform:", err)
		os.Exit(1)
	}
	code := env.HoldToContract(m.Run())
	env.Stop()
	os.Exit(code)
}
