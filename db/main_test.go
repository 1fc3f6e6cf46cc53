package db_test

import (
	"os"
	"testing"

	"github.com/tuneforge/tuneforge/internal/dbtest"
)

func TestMain(m *testing.M) { os.Exit(dbtest.Run(m)) }
