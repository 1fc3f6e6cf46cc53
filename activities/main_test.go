package activities_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/tuneforge/tuneforge/internal/testenv"
)

// env is the platform the package's integration tests run against: a
// PostgreSQL database of their own, an embedded Temporal server, the
// workers and the API.
var env *testenv.Env

func TestMain(m *testing.M) {
	// A test that must have the process to itself runs again with this
	// set, and without the platform (see runAlone).
	if os.Getenv("TUNEFORGE_TEST_ALONE") != "" {
		os.Exit(m.Run())
	}
	var err error
	if env, err = testenv.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "start test platform:", err)
		os.Exit(1)
	}
	code := env.HoldToContract(m.Run())
	env.Stop()
	os.Exit(code)
}
