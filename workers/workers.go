// Package workers runs tuneforge's Temporal workers: the control worker
// (job workflows and control activities) and the training workers, one per
// hardware pool, whose slots are the pool's capacity.
package workers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/contrib/opentelemetry"
	"go.temporal.io/sdk/interceptor"
	tlog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tuneforge/tuneforge/activities"
	"github.com/tuneforge/tuneforge/metrics"
	"github.com/tuneforge/tuneforge/workflows"
)

// Dial connects to Temporal with the OpenTelemetry tracing interceptor, so
// spans flow from API requests into workflows and activities (workers made
// from the client inherit it). A quick TCP check first turns "nothing
// listens" into an error that says what to do.
func Dial(ctx context.Context, addr, namespace string, log *slog.Logger) (client.Client, error) {
	conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return nil, fmt.Errorf("Temporal at %s does not answer (set TUNEFORGE_TEMPORAL_ADDR, or run `tuneforge dev`): %w", addr, err)
	}
	conn.Close()
	tracing, err := opentelemetry.NewTracingInterceptor(opentelemetry.TracerOptions{})
	if err != nil {
		return nil, fmt.Errorf("tracing interceptor: %w", err)
	}
	sdkMetrics, err := metrics.TemporalHandler()
	if err != nil {
		return nil, err
	}
	c, err := client.DialContext(ctx, client.Options{
		HostPort:       addr,
		Namespace:      namespace,
		Logger:         tlog.NewStructuredLogger(slog.New(quietSDK{log.Handler()}).With("component", "temporal-sdk")),
		Interceptors:   []interceptor.ClientInterceptor{tracing},
		MetricsHandler: sdkMetrics,
	})
	if err != nil {
		return nil, fmt.Errorf("connect to Temporal at %s: %w", addr, err)
	}
	return c, nil
}

// Timing of the training workers' advertisement and of cancellation.
const (
	// GPULiveness: a training worker unseen for this long no longer counts.
	GPULiveness = 10 * time.Second
	// advertiseEvery refreshes a training worker's row well inside GPULiveness.
	advertiseEvery = 2 * time.Second
	// heartbeatThrottle caps how long a heartbeat (and so a stop) may wait
	// in the SDK's buffer; the default would be 0.8 × the heartbeat timeout.
	heartbeatThrottle = 100 * time.Millisecond
)

// RunControl runs the control worker until ctx ends.
func RunControl(ctx context.Context, c client.Client, acts *activities.Activities) error {
	w := worker.New(c, workflows.ControlTaskQueue, worker.Options{
		MaxHeartbeatThrottleInterval: heartbeatThrottle,
		WorkerStopTimeout:            10 * time.Second,
		// The API reads it (DescribeTaskQueue) to choose new jobs' revision.
		Identity: workflows.WorkerIdentity(controlIdentity()),
	})
	w.RegisterWorkflowWithOptions(workflows.FineTuningJob, workflow.RegisterOptions{Name: "FineTuningJob"})
	w.RegisterWorkflowWithOptions(workflows.DeleteJob, workflow.RegisterOptions{Name: "DeleteJob"})
	// Activities are registered under their method names, the names the
	// workflows' method values resolve to: a rename cannot break the link.
	w.RegisterActivity(acts)
	return run(ctx, w)
}

// Training describes one training worker.
type Training struct {
	ID         string // stable across restarts of the same host and pool
	HardwareID string
	Slots      int
	// CheckGPUs makes the worker report the host's GPUs and refuse a pool
	// they cannot serve before it takes work. Off for the builtin trainer,
	// which runs on the CPU whatever the pool is called.
	CheckGPUs bool
}

// RunTraining runs a training worker for one hardware pool until ctx ends,
// advertising its slots in PostgreSQL so the pool's capacity is known, and
// its trainer (activities.Trainer), so a job's validation checks what the
// pool's trainers need. A command trainer's runner is fitted to the pool
// first (see fitRunner).
func RunTraining(ctx context.Context, c client.Client, acts *activities.Activities, t Training, log *slog.Logger) error {
	if t.Slots < 1 {
		return fmt.Errorf("--slots must be at least 1, not %d", t.Slots)
	}
	hw, err := acts.Store.Hardware(ctx, t.HardwareID)
	if err != nil {
		return fmt.Errorf("hardware %q is not in the catalog: %w", t.HardwareID, err)
	}
	var gpus []GPU
	if t.CheckGPUs {
		if gpus, err = checkGPUs(ctx, t, hw, log); err != nil {
			return err
		}
	}
	if acts.Command != nil {
		if err := fitRunner(acts.Command, hw, t.Slots, gpus, os.Getenv("CUDA_VISIBLE_DEVICES")); err != nil {
			return fmt.Errorf("training worker %s: %w", t.ID, err)
		}
		killed, err := activities.SweepWorkRoot(acts.WorkDir)
		if err != nil {
			return err
		}
		if killed > 0 {
			log.Warn("killed trainer processes left by an earlier run of this worker", "worker", t.ID, "processes", killed)
		}
	}
	w := worker.New(c, workflows.TrainingTaskQueue(t.HardwareID), worker.Options{
		MaxConcurrentActivityExecutionSize: t.Slots,
		MaxHeartbeatThrottleInterval:       heartbeatThrottle,
		// A stopping worker tells its epochs at once (TrainEpoch halts,
		// checkpoints and hands the attempt back) and waits this long for
		// them, so a rolling restart loses no progress.
		WorkerStopTimeout: trainingStopTimeout(acts),
		Identity:          t.ID,
	})
	w.RegisterActivity(acts)
	// Each advertisement also dispatches the pool: slots this worker adds
	// go to waiting jobs at once, and a grant whose signal was lost (a
	// crash between grant and signal) is sent again.
	advertise := func(ctx context.Context) error {
		if err := acts.Store.AdvertiseGPUWorker(ctx, t.ID, t.HardwareID, t.Slots, activities.Trainer(acts)); err != nil {
			return err
		}
		return acts.DispatchGPUs(ctx, t.HardwareID)
	}
	if err := advertise(ctx); err != nil {
		return fmt.Errorf("advertise training worker: %w", err)
	}
	go func() {
		tick := time.NewTicker(advertiseEvery)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if err := advertise(ctx); err != nil && ctx.Err() == nil {
					log.Warn("advertise training worker", "worker", t.ID, "err", err)
				}
			}
		}
	}()
	err = run(ctx, w)
	// Leaving cleanly: the slots stop counting at once rather than after GPULiveness.
	cleanup, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if derr := acts.Store.WithdrawGPUWorker(cleanup, t.ID); derr != nil {
		log.Warn("withdraw training worker", "worker", t.ID, "err", derr)
	}
	return err
}

// trainingStopTimeout bounds a stopping training worker's wait for its
// epochs to hand back: a checkpoint's save, and for the command trainer its
// grace after SIGTERM and the checkpoint's upload.
func trainingStopTimeout(acts *activities.Activities) time.Duration {
	if acts.Command != nil {
		return acts.Command.Grace + 90*time.Second
	}
	return 30 * time.Second
}

func run(ctx context.Context, w worker.Worker) error {
	if err := w.Start(); err != nil {
		return fmt.Errorf("start worker: %w", err)
	}
	<-ctx.Done()
	w.Stop()
	return nil
}

// NamespaceRetention is how long a namespace that tuneforge registers keeps
// closed workflows' histories.
const NamespaceRetention = 30 * 24 * time.Hour

// RegisterSearchAttributes adds tuneforge's search attributes to the
// namespace of a production Temporal server; existing ones are kept. A
// fresh cluster has no namespace yet: it is registered first, and the
// attributes are added once the server's roles know it (their namespace
// caches refresh within seconds).
func RegisterSearchAttributes(ctx context.Context, c client.Client, namespace string) error {
	if err := ensureNamespace(ctx, c, namespace); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		_, err := c.OperatorService().AddSearchAttributes(ctx, &operatorservice.AddSearchAttributesRequest{
			Namespace: namespace, SearchAttributes: workflows.SearchAttributes(),
		})
		var exists *serviceerror.AlreadyExists
		var notFound *serviceerror.NamespaceNotFound
		switch {
		case err == nil || errors.As(err, &exists):
			return nil
		case !errors.As(err, &notFound) && !errors.As(err, new(*serviceerror.Unavailable)):
			return fmt.Errorf("register search attributes: %w", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("register search attributes: namespace %s is not known to the server yet: %w", namespace, err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// ensureNamespace registers namespace when the server lacks it.
func ensureNamespace(ctx context.Context, c client.Client, namespace string) error {
	_, err := c.WorkflowService().DescribeNamespace(ctx, &workflowservice.DescribeNamespaceRequest{Namespace: namespace})
	var notFound *serviceerror.NamespaceNotFound
	if !errors.As(err, &notFound) {
		if err != nil {
			return fmt.Errorf("describe namespace %s: %w", namespace, err)
		}
		return nil
	}
	_, err = c.WorkflowService().RegisterNamespace(ctx, &workflowservice.RegisterNamespaceRequest{
		Namespace: namespace, WorkflowExecutionRetentionPeriod: durationpb.New(NamespaceRetention),
		Description: "tuneforge's fine-tuning jobs",
	})
	var exists *serviceerror.NamespaceAlreadyExists
	if err != nil && !errors.As(err, &exists) {
		return fmt.Errorf("register namespace %s: %w", namespace, err)
	}
	return nil
}

// controlIdentity is the SDK's default identity of a worker: pid@host.
func controlIdentity() string {
	host, _ := os.Hostname() // an empty host still names the process
	return fmt.Sprintf("%d@%s", os.Getpid(), host)
}
