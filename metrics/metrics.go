// Package metrics holds tuneforge's Prometheus metrics beyond HTTP: job
// transitions, the GPU queue, trainer throughput, and the Temporal SDK's
// own metrics. Every process serves them on TUNEFORGE_METRICS_ADDR.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/contrib/opentelemetry"

	"github.com/tuneforge/tuneforge/db"
)

var (
	// JobTransitions counts the status changes jobs record, by the status
	// entered.
	JobTransitions = register(prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tuneforge_job_transitions_total", Help: "Job status changes recorded, by the status entered.",
	}, []string{"status"}))
	// QueueWait is how long jobs wait for a GPU slot, by pool: from the
	// job's queueing (its creation or restart, so dataset validation is in
	// it) to the grant.
	QueueWait = register(prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "tuneforge_gpu_queue_wait_seconds",
		Help:    "Time from a job's queueing (creation or restart, validation included) to its GPU slot, by pool.",
		Buckets: prometheus.ExponentialBucketsRange(0.1, 6*3600, 16),
	}, []string{"pool"}))
	// TrainerSteps and TrainerTokens count optimizer steps and tokens
	// trained, by pool and trainer; their rates are steps and tokens per
	// second.
	TrainerSteps = register(prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tuneforge_trainer_steps_total", Help: "Optimizer steps trained, by pool and trainer.",
	}, []string{"pool", "trainer"}))
	TrainerTokens = register(prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tuneforge_trainer_tokens_total", Help: "Tokens trained, by pool and trainer.",
	}, []string{"pool", "trainer"}))
)

// register registers c on the default registry, or returns the collector
// already registered under its names.
func register[C prometheus.Collector](c C) C {
	if err := prometheus.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic(fmt.Sprintf("register metric: %v", err))
	}
	return c
}

// pools is the GPU pools' gauges, read from PostgreSQL at each scrape: the
// queue is shared by every process, so any one of them can tell it.
type pools struct {
	store    *db.Store
	liveness time.Duration
	log      *slog.Logger

	slots, inUse, waiting *prometheus.Desc
}

// RegisterPools makes the process report each GPU pool's live slots, slots
// in use and queue length (once per process; later calls do nothing).
func RegisterPools(store *db.Store, liveness time.Duration, log *slog.Logger) {
	poolsOnce.Do(func() {
		prometheus.MustRegister(&pools{
			store: store, liveness: liveness, log: log,
			slots:   prometheus.NewDesc("tuneforge_gpu_slots", "Slots of a pool's live training workers.", []string{"pool"}, nil),
			inUse:   prometheus.NewDesc("tuneforge_gpu_slots_in_use", "Slots of a pool granted to jobs.", []string{"pool"}, nil),
			waiting: prometheus.NewDesc("tuneforge_gpu_queue_length", "Jobs waiting for a slot of a pool.", []string{"pool"}, nil),
		})
	})
}

var poolsOnce sync.Once

func (p *pools) Describe(ch chan<- *prometheus.Desc) {
	ch <- p.slots
	ch <- p.inUse
	ch <- p.waiting
}

func (p *pools) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	usage, err := p.store.PoolUsage(ctx, p.liveness)
	if err != nil {
		p.log.Warn("GPU pool metrics unavailable", "err", err)
		return
	}
	for _, u := range usage {
		ch <- prometheus.MustNewConstMetric(p.slots, prometheus.GaugeValue, float64(u.Capacity), u.HardwareID)
		ch <- prometheus.MustNewConstMetric(p.inUse, prometheus.GaugeValue, float64(u.Granted), u.HardwareID)
		ch <- prometheus.MustNewConstMetric(p.waiting, prometheus.GaugeValue, float64(u.Waiting), u.HardwareID)
	}
}

// TemporalHandler is the Temporal SDK's metrics handler: its metrics
// (requests, task latencies, slots, activity and workflow outcomes) join
// the process's Prometheus metrics, named temporal_….
func TemporalHandler() (client.MetricsHandler, error) {
	temporalOnce.Do(func() {
		var exporter *otelprom.Exporter
		exporter, temporalErr = otelprom.New(otelprom.WithoutScopeInfo(), otelprom.WithoutTargetInfo())
		if temporalErr != nil {
			temporalErr = fmt.Errorf("Temporal SDK metrics: %w", temporalErr)
			return
		}
		meter := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter)).Meter("temporal-sdk-go")
		temporalHandler = opentelemetry.NewMetricsHandler(opentelemetry.MetricsHandlerOptions{
			Meter: meter, UseMonotonicCounters: true,
			OnError: func(err error) { slog.Warn("Temporal SDK metric not recorded", "err", err) },
		})
	})
	return temporalHandler, temporalErr
}

var (
	temporalOnce    sync.Once
	temporalHandler client.MetricsHandler
	temporalErr     error
)
