package server_test

import (
	"fmt"
	"os"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/tuneforge/tuneforge/internal/inferencetest"
	"github.com/tuneforge/tuneforge/internal/testenv"
)

var (
	env   *testenv.Env
	spans = tracetest.NewSpanRecorder()
	// backend is the inference backend the platform deploys adapters to.
	backend *inferencetest.Server
)

func TestMain(m *testing.M) {
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans)))
	otel.SetTextMapPropagator(propagation.TraceContext{})
	backend = inferencetest.New()
	var err error
	if env, err = testenv.Start(testenv.WithInference(backend.URL)); err != nil {
		fmt.Fprintln(os.Stderr, "start test platform:", err)
		os.Exit(1)
	}
	code := env.HoldToContract(m.Run())
	env.Stop()
	backend.Close()
	os.Exit(code)
}
